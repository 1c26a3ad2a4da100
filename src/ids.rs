//! Identifiers that cross modules, each formatted in one place: model and subscription
//! references, the selected subscription key that counters and the token meter share, usernames.

//!
//! A leaf module: it imports nothing from the crate, so every other module may use it (the
//! policy converts its own objects into these).

use std::fmt;

/// A `<namespace>/<name>` reference type: constructor, accessors and `Display`, written once.
macro_rules! namespaced_name {
    ($(#[$doc:meta])* $name:ident, $display:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name {
            namespace: String,
            name: String,
        }

        impl $name {
            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
                Self {
                    namespace: namespace.into(),
                    name: name.into(),
                }
            }

            pub fn namespace(&self) -> &str {
                &self.namespace
            }

            pub fn name(&self) -> &str {
                &self.name
            }
        }

        #[doc = $display]
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.namespace, self.name)
            }
        }
    };
}

namespaced_name!(
    /// A `MaaSModelRef` as the policy resolved it: `<namespace>/<name>`.
    ModelRef,
    "`<namespace>/<name>`, as upstream writes model identities."
);

namespaced_name!(
    /// A `MaaSSubscription` as the policy knows it: `<namespace>/<name>`.
    SubscriptionRef,
    "`<namespace>/<name>`, the form stored on API keys."
);

/// The subscription an allowed request is bound to, in the two forms its answer carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoundSubscription {
    /// The policy knows the key's subscription.
    Known(SubscriptionRef),
    /// The policy does not know it (a model-free path): only the name stored on the key.
    Unresolved(String),
}

impl BoundSubscription {
    /// The name the `x-maas-subscription` header and dynamic metadata carry: the subscription's
    /// bare name when the policy knows it, else the key's stored reference as is.
    pub fn header_value(&self) -> &str {
        match self {
            BoundSubscription::Known(subscription) => subscription.name(),
            BoundSubscription::Unresolved(stored) => stored,
        }
    }

    pub fn known(&self) -> Option<&SubscriptionRef> {
        match self {
            BoundSubscription::Known(subscription) => Some(subscription),
            BoundSubscription::Unresolved(_) => None,
        }
    }
}

/// `<subNs>/<subName>@<modelNs>/<modelName>`: upstream's rate-limit key, under which Check counts
/// requests and the token meter charges tokens. The only place it is formatted or read.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionKey(String);

impl SubscriptionKey {
    pub fn new(subscription: &SubscriptionRef, model: &ModelRef) -> Self {
        Self::from_names(
            &subscription.namespace,
            &subscription.name,
            &model.namespace,
            &model.name,
        )
    }

    /// The key of a subscription and a model given by their names, without copying them first.
    pub fn from_names(
        subscription_namespace: &str,
        subscription_name: &str,
        model_namespace: &str,
        model_name: &str,
    ) -> Self {
        Self(format!(
            "{subscription_namespace}/{subscription_name}@{model_namespace}/{model_name}"
        ))
    }

    /// A key as it arrives from elsewhere (the identity assertion), kept as sent; see
    /// [`SubscriptionKey::parts`] for reading it.
    pub fn from_wire(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The subscription reference (`<ns>/<name>`) and the model's namespace and name; `None`
    /// when the text is not of this form.
    pub fn parts(&self) -> Option<(&str, &str, &str)> {
        let (subscription, model) = self.0.split_once('@')?;
        let (model_namespace, model_name) = model.split_once('/')?;
        Some((subscription, model_namespace, model_name))
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A user's name as an identity source asserted it; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

/// Why a username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the username is empty")]
pub struct EmptyUsername;

impl Username {
    /// Refuses an empty (or only blank) name: no identity may act as "nobody", and counters and
    /// key ownership are keyed by this name.
    pub fn new(name: impl Into<String>) -> Result<Self, EmptyUsername> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(EmptyUsername);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Username {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Username {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Username {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Username> for String {
    fn eq(&self, other: &Username) -> bool {
        *self == other.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_key_is_subscription_at_model() {
        let key = SubscriptionKey::new(
            &SubscriptionRef::new("models-as-a-service", "free"),
            &ModelRef::new("llm", "simulator"),
        );
        assert_eq!(key.as_str(), "models-as-a-service/free@llm/simulator");
    }

    #[test]
    fn a_subscription_key_reads_back_into_its_parts() {
        let key = SubscriptionKey::from_wire("maas/free@llm/simulator");
        assert_eq!(key.parts(), Some(("maas/free", "llm", "simulator")));
        assert_eq!(SubscriptionKey::from_wire("maas/free").parts(), None);
        assert_eq!(
            SubscriptionKey::from_wire("maas/free@simulator").parts(),
            None
        );
    }

    #[test]
    fn references_display_as_namespace_slash_name() {
        assert_eq!(ModelRef::new("llm", "qwen3").to_string(), "llm/qwen3");
        assert_eq!(
            SubscriptionRef::new("maas", "free").to_string(),
            "maas/free"
        );
    }

    #[test]
    fn the_subscription_header_carries_the_bare_name_of_a_known_subscription() {
        let known = BoundSubscription::Known(SubscriptionRef::new("maas", "free"));
        let unresolved = BoundSubscription::Unresolved("maas/gone".to_owned());
        assert_eq!(known.header_value(), "free");
        assert_eq!(unresolved.header_value(), "maas/gone");
        assert_eq!(unresolved.known(), None);
    }

    #[test]
    fn an_empty_username_is_refused() {
        assert_eq!(Username::new(""), Err(EmptyUsername));
        assert_eq!(Username::new("  "), Err(EmptyUsername));
        assert_eq!(Username::new("alice").unwrap().as_str(), "alice");
    }
}
