//! Turns YAML documents into typed MaaS manifests, reporting every problem with its field path.

use std::collections::BTreeMap;
use std::panic::catch_unwind;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use super::error::{IssueLog, PolicyIssue};
use super::fields::{Field, FieldIssues, Object, describe};
use super::source::SourceFile;
use super::{BillingRate, DEFAULT_NAMESPACE, RateLimit, SpendLimit};
use crate::money::Amount;

/// The API group all three kinds belong to.
pub(super) const API_GROUP: &str = "maas.opendatahub.io";
/// The only version of that group this build understands.
pub(super) const API_VERSION: &str = "maas.opendatahub.io/v1alpha1";

const TIER_ANNOTATION: &str = "maas.opendatahub.io/tier";
const DISPLAY_NAME_ANNOTATION: &str = "openshift.io/display-name";
const DESCRIPTION_ANNOTATION: &str = "openshift.io/description";

const MAX_LIMIT: i64 = 1_000_000_000;
const WINDOW_PATTERN: &str = r"^[1-9]\d{0,3}(s|m|h)$";
/// Upstream's controller caps windows at 366 days.
const MAX_WINDOW_HOURS: u64 = 8784;

/// The three MaaS kinds a policy is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    ModelRef,
    Subscription,
    AuthPolicy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ModelRef => "MaaSModelRef",
            Kind::Subscription => "MaaSSubscription",
            Kind::AuthPolicy => "MaaSAuthPolicy",
        }
    }

    fn from_name(kind: &str) -> Option<Self> {
        [Kind::ModelRef, Kind::Subscription, Kind::AuthPolicy]
            .into_iter()
            .find(|candidate| candidate.name() == kind)
    }
}

/// Where a manifest came from, so that later cross-document checks can point back at it.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub source: Arc<str>,
    pub file_order: usize,
    /// 1-based.
    pub document: usize,
    pub kind: Kind,
    pub name: String,
}

impl Origin {
    pub fn issue(&self, field: &str, message: impl Into<String>) -> PolicyIssue {
        PolicyIssue {
            source: self.source.to_string(),
            document: Some(self.document),
            object: Some(format!("{} {}", self.kind.name(), self.name)),
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        }
    }

    pub fn order(&self) -> (usize, usize) {
        (self.file_order, self.document)
    }

    /// "file: document N", for messages that point at a second place.
    pub fn location(&self) -> String {
        format!("{}: document {}", self.source, self.document)
    }
}

/// One MaaS object that was complete enough to take part in cross-document checks.
#[derive(Debug)]
pub(super) struct Document {
    pub origin: Origin,
    pub metadata: Metadata,
    pub manifest: Manifest,
}

#[derive(Debug)]
pub(super) struct Metadata {
    pub name: String,
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub tier: Option<String>,
    /// `metadata.creationTimestamp` in Unix seconds, when given.
    pub created: Option<i64>,
}

#[derive(Debug)]
pub(super) enum Manifest {
    ModelRef(ModelRefSpec),
    Subscription(SubscriptionSpec),
    AuthPolicy(AuthPolicySpec),
}

#[derive(Debug)]
pub(super) struct ModelRefSpec {
    pub backend_namespace: Option<String>,
    pub endpoint: Option<String>,
    /// `status.resolvedModelAlias`, when a controller (or the operator) wrote one.
    pub served_name: Option<String>,
    /// `status.phase` is `Ready`, or there is no status phase.
    pub ready: bool,
}

#[derive(Debug)]
pub(super) struct SubscriptionSpec {
    pub owner_users: Vec<String>,
    pub owner_groups: Vec<String>,
    pub model_refs: Vec<SubscriptionModelRef>,
    pub organization_id: Option<String>,
    pub cost_center: Option<String>,
    /// `tokenMetadata.labels`, for chargeback.
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
}

/// A subscription's model entry; kept even when its limits are wrong, so its reference still gets
/// checked and reported.
#[derive(Debug)]
pub(super) struct SubscriptionModelRef {
    pub path: String,
    pub name: String,
    pub namespace: String,
    pub token_limits: Vec<RateLimit>,
    pub request_limits: Vec<RateLimit>,
    /// `billingRate` (upstream's `perToken`, our prompt/completion rates).
    pub billing: BillingRate,
    /// `spendLimits`, our extension.
    pub spend_limits: Vec<SpendLimit>,
}

#[derive(Debug)]
pub(super) struct AuthPolicySpec {
    pub model_refs: Vec<AuthModelRef>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// An auth policy's model entry: a bare name, or a name qualified by namespace.
#[derive(Debug)]
pub(super) struct AuthModelRef {
    pub path: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// Parses every document of one file, adding its problems to `issues`.
pub(super) fn parse_source(
    file_order: usize,
    source: &SourceFile,
    issues: &mut IssueLog,
) -> Vec<Document> {
    let source_name: Arc<str> = Arc::from(source.display.as_str());
    let file_issue = |document: Option<usize>, message: String| PolicyIssue {
        source: source.display.clone(),
        document,
        object: None,
        field: None,
        message,
    };

    let text = match std::str::from_utf8(&source.bytes) {
        Ok(text) => text,
        Err(error) => {
            let message = format!(
                "file is not valid UTF-8 (invalid byte at offset {})",
                error.valid_up_to()
            );
            issues.push_unparsable((file_order, 0), file_issue(None, message));
            return Vec::new();
        }
    };

    // The parser has panicking paths for malformed event streams; a policy file must never be
    // able to take the process down, so a panic becomes one more issue.
    let (values, yaml_error) = match catch_unwind(|| split_documents(text)) {
        Ok(split) => split,
        Err(_) => {
            let message = "the YAML parser failed on this file".to_owned();
            issues.push_unparsable((file_order, 0), file_issue(None, message));
            return Vec::new();
        }
    };

    let mut documents = Vec::new();
    for (position, mut value) in values.into_iter().enumerate() {
        let number = position + 1;
        if let Err(error) = value.apply_merge() {
            let message = format!("invalid YAML merge key: {error}");
            issues.push_unparsable((file_order, number), file_issue(Some(number), message));
            continue;
        }
        let context = DocumentContext {
            source: &source_name,
            file_order,
            document: number,
        };
        if let Some(document) = parse_document(&context, &value, issues) {
            documents.push(document);
        }
    }
    if let Some((number, error)) = yaml_error {
        issues.push_unparsable(
            (file_order, number),
            file_issue(Some(number), yaml_error_message(&error)),
        );
    }
    documents
}

/// Parses a rate-limit window such as `1m` or `24h`.
pub(super) fn parse_window(text: &str) -> Result<Duration, String> {
    let pattern_error = || format!("{text:?} does not match {WINDOW_PATTERN}");
    let Some(unit) = text.chars().last() else {
        return Err(pattern_error());
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    let well_formed = (1..=4).contains(&digits.len())
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && !digits.starts_with('0');
    let seconds_per_unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return Err(pattern_error()),
    };
    let amount: u64 = match digits.parse() {
        Ok(amount) if well_formed => amount,
        _ => return Err(pattern_error()),
    };
    let seconds = amount * seconds_per_unit;
    if seconds > MAX_WINDOW_HOURS * 3600 {
        return Err(format!(
            "{text:?} is longer than the maximum window of {MAX_WINDOW_HOURS}h (366 days)"
        ));
    }
    Ok(Duration::from_secs(seconds))
}

/// Each document of a YAML stream, and the error that stopped reading, with its 1-based number.
fn split_documents(text: &str) -> (Vec<Value>, Option<(usize, serde_norway::Error)>) {
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(value) => values.push(value),
            // After an error the parser is left mid-stream: going on yields the same error again
            // or garbage, so the rest of the file is not read.
            Err(error) => {
                let number = values.len() + 1;
                return (values, Some((number, error)));
            }
        }
    }
    (values, None)
}

fn yaml_error_message(error: &serde_norway::Error) -> String {
    let text = error.to_string();
    match error.location() {
        Some(location) if !text.contains(" line ") => format!(
            "invalid YAML at line {}, column {}: {text}",
            location.line(),
            location.column()
        ),
        _ => format!("invalid YAML: {text}"),
    }
}

struct DocumentContext<'a> {
    source: &'a Arc<str>,
    file_order: usize,
    document: usize,
}

fn parse_document(
    context: &DocumentContext<'_>,
    value: &Value,
    issues: &mut IssueLog,
) -> Option<Document> {
    if value.is_null() {
        return None;
    }
    let mut found = FieldIssues::default();
    let order = (context.file_order, context.document);
    let (raw_namespace, raw_name) = raw_identity(value);
    issues.identify(order, "unknown", &raw_namespace, &raw_name);
    let Some(object) = Field::root(value).object(&mut found) else {
        flush(context, None, found, issues);
        return None;
    };
    let Some((api_version, kind_name)) = read_header(&object, &mut found) else {
        flush(context, None, found, issues);
        return None;
    };

    let group = api_version.split_once('/').map_or("", |(group, _)| group);
    let kind = Kind::from_name(kind_name).filter(|_| group == API_GROUP);
    let Some(kind) = kind else {
        issues.identify(order, kind_name, &raw_namespace, &raw_name);
        tracing::warn!(
            source = %context.source,
            document = context.document,
            api_version,
            kind = kind_name,
            "skipping a document that is not a MaaS policy object"
        );
        flush(context, None, found, issues);
        return None;
    };

    let metadata = object
        .required("metadata", &mut found)
        .and_then(|field| field.object(&mut found))
        .and_then(|metadata| read_metadata(&metadata, &mut found));
    let label = match &metadata {
        Some(metadata) => format!("{} {}", kind.name(), metadata.name),
        None => kind.name().to_owned(),
    };
    match &metadata {
        Some(metadata) => issues.identify(order, kind.name(), &metadata.namespace, &metadata.name),
        None => issues.identify(order, kind.name(), &raw_namespace, &raw_name),
    }

    if api_version != API_VERSION {
        // Another version's spec may be shaped differently; judging it by v1alpha1's rules
        // would only add noise to the one message that matters.
        found.at(
            "apiVersion",
            format!(
                "{api_version:?} is not supported for {} (expected {API_VERSION})",
                kind.name()
            ),
        );
        flush(context, Some(&label), found, issues);
        return None;
    }

    let spec = object
        .required("spec", &mut found)
        .and_then(|field| field.object(&mut found));
    let manifest = spec.and_then(|spec| match kind {
        Kind::ModelRef => {
            let status = object
                .optional("status")
                .and_then(|field| field.object(&mut found));
            read_model_ref(&spec, status.as_ref(), &mut found).map(Manifest::ModelRef)
        }
        Kind::Subscription => read_subscription(&spec, &mut found).map(Manifest::Subscription),
        Kind::AuthPolicy => read_auth_policy(&spec, &mut found).map(Manifest::AuthPolicy),
    });
    // An object with any problem is left out whole: serving half of a subscription or auth
    // policy the operator did not write would be a guess.
    let invalid = !found.is_empty();
    flush(context, Some(&label), found, issues);
    if invalid {
        return None;
    }

    let metadata = metadata?;
    Some(Document {
        origin: Origin {
            source: Arc::clone(context.source),
            file_order: context.file_order,
            document: context.document,
            kind,
            name: metadata.name.clone(),
        },
        metadata,
        manifest: manifest?,
    })
}

/// `metadata.namespace` and `metadata.name` as written, for naming an object whose metadata did
/// not validate; the namespace defaults as a valid object's would.
fn raw_identity(value: &Value) -> (String, String) {
    let metadata = value.get("metadata");
    let text = |key: &str| {
        metadata
            .and_then(|metadata| metadata.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let namespace = match metadata {
        Some(_) => text("namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        None => String::new(),
    };
    (namespace, text("name").unwrap_or_default())
}

fn flush(
    context: &DocumentContext<'_>,
    label: Option<&str>,
    found: FieldIssues,
    issues: &mut IssueLog,
) {
    for (field, message) in found.into_entries() {
        issues.push(
            (context.file_order, context.document),
            PolicyIssue {
                source: context.source.to_string(),
                document: Some(context.document),
                object: label.map(str::to_owned),
                field,
                message,
            },
        );
    }
}

fn read_header<'v>(object: &Object<'v>, found: &mut FieldIssues) -> Option<(&'v str, &'v str)> {
    let api_version = object
        .required("apiVersion", found)
        .and_then(|field| field.non_empty_string(found));
    let kind = object
        .required("kind", found)
        .and_then(|field| field.non_empty_string(found));
    Some((api_version?, kind?))
}

fn read_metadata(metadata: &Object<'_>, found: &mut FieldIssues) -> Option<Metadata> {
    let name = metadata.required("name", found).and_then(|field| {
        checked(
            &field,
            field.string(found),
            is_object_name,
            NAME_RULE,
            found,
        )
    });
    let namespace = match metadata.optional("namespace") {
        Some(field) => checked(
            &field,
            field.string(found),
            is_namespace,
            NAMESPACE_RULE,
            found,
        ),
        None => Some(DEFAULT_NAMESPACE),
    };
    let annotations: BTreeMap<&str, &str> = metadata
        .optional("annotations")
        .and_then(|field| field.object(found))
        .map(|annotations| annotations.string_entries(found).into_iter().collect())
        .unwrap_or_default();

    let tier = annotations.get(TIER_ANNOTATION).map(|tier| tier.trim());
    if tier == Some("") {
        let path = format!("{}.annotations[{TIER_ANNOTATION:?}]", metadata.path());
        found.at(&path, "must not be empty");
    }
    let non_blank = |key: &str| {
        annotations
            .get(key)
            .map(|text| text.trim())
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    let created = metadata.optional("creationTimestamp").and_then(|field| {
        let text = field.string(found)?;
        match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.timestamp()),
            Err(_) => {
                found.at(
                    field.path(),
                    format!("{text:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
                );
                None
            }
        }
    });
    Some(Metadata {
        created,
        name: name?.to_owned(),
        namespace: namespace?.to_owned(),
        display_name: non_blank(DISPLAY_NAME_ANNOTATION),
        description: non_blank(DESCRIPTION_ANNOTATION),
        tier: non_blank(TIER_ANNOTATION),
    })
}

fn read_model_ref(
    spec: &Object<'_>,
    status: Option<&Object<'_>>,
    found: &mut FieldIssues,
) -> Option<ModelRefSpec> {
    let served_name = status.and_then(|status| {
        status
            .optional("resolvedModelAlias")
            .and_then(|field| field.string(found))
            .map(str::trim)
            .filter(|alias| !alias.is_empty())
            .map(str::to_owned)
    });
    let ready = status
        .and_then(|status| optional_string(status, "phase", found))
        .is_none_or(|phase| phase == "Ready");
    let backend_namespace = spec
        .required("modelRef", found)
        .and_then(|field| field.object(found))
        .and_then(|backend| read_backend_namespace(&backend, found));
    let endpoint = match spec.optional("endpoint") {
        Some(field) => read_endpoint(&field, found).map(Some),
        None => Some(None),
    };
    Some(ModelRefSpec {
        backend_namespace: backend_namespace?,
        endpoint: endpoint?,
        served_name,
        ready,
    })
}

/// Checks `spec.modelRef` and returns its optional namespace; `None` when the block is invalid.
fn read_backend_namespace(backend: &Object<'_>, found: &mut FieldIssues) -> Option<Option<String>> {
    let kind = backend
        .required("kind", found)
        .and_then(|field| field.non_empty_string(found));
    let name = backend
        .required("name", found)
        .and_then(|field| field.non_empty_string(found));
    let namespace = match backend.optional("namespace") {
        Some(field) => checked(
            &field,
            field.string(found),
            is_namespace,
            NAMESPACE_RULE,
            found,
        )
        .map(|namespace| Some(namespace.to_owned())),
        None => Some(None),
    };
    kind?;
    name?;
    namespace
}

fn read_endpoint(field: &Field<'_>, found: &mut FieldIssues) -> Option<String> {
    let text = field.non_empty_string(found)?;
    if is_http_url(text) {
        Some(text.to_owned())
    } else {
        found.at(
            field.path(),
            format!("{text:?} is not an absolute http:// or https:// URL"),
        );
        None
    }
}

fn read_subscription(spec: &Object<'_>, found: &mut FieldIssues) -> Option<SubscriptionSpec> {
    let owner = spec
        .required("owner", found)
        .and_then(|field| field.object(found))
        .and_then(|owner| read_subjects(&owner, found));

    let model_refs = spec
        .required("modelRefs", found)
        .map(|field| {
            let items = field.items(found);
            if items.is_empty() && field.value().is_sequence() {
                found.at(field.path(), "must list at least one model");
            }
            items
                .iter()
                .filter_map(|item| read_subscription_model_ref(item, found))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();

    let token_metadata = spec
        .optional("tokenMetadata")
        .and_then(|field| field.object(found));
    let mut organization_id = None;
    let mut cost_center = None;
    let mut labels = BTreeMap::new();
    if let Some(metadata) = &token_metadata {
        organization_id = optional_string(metadata, "organizationId", found);
        cost_center = optional_string(metadata, "costCenter", found);
        if let Some(entries) = metadata
            .optional("labels")
            .and_then(|field| field.object(found))
        {
            labels = entries
                .string_entries(found)
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect();
        }
    }

    let priority = match spec.optional("priority") {
        None => Some(0),
        Some(field) => field.integer(found).and_then(|priority| {
            let narrowed = i32::try_from(priority).ok();
            if narrowed.is_none() {
                found.at(
                    field.path(),
                    format!("{priority} is out of range for a 32-bit integer"),
                );
            }
            narrowed
        }),
    };

    let (owner_users, owner_groups) = owner?;
    Some(SubscriptionSpec {
        owner_users,
        owner_groups,
        model_refs,
        organization_id,
        cost_center,
        labels,
        priority: priority?,
    })
}

fn read_subscription_model_ref(
    item: &Field<'_>,
    found: &mut FieldIssues,
) -> Option<SubscriptionModelRef> {
    let entry = item.object(found)?;
    let name = entry
        .required("name", found)
        .and_then(|field| field.non_empty_string(found));
    let namespace = entry
        .required("namespace", found)
        .and_then(|field| field.non_empty_string(found));
    let token_limits = entry
        .required("tokenRateLimits", found)
        .map(|field| read_rate_limits(&field, true, found))
        .unwrap_or_default();
    let request_limits = entry
        .optional("requestRateLimits")
        .map(|field| read_rate_limits(&field, false, found))
        .unwrap_or_default();
    let billing = match entry.optional("billingRate") {
        Some(field) => read_billing_rate(&field, found),
        None => Some(BillingRate::default()),
    };
    let spend_limits = entry
        .optional("spendLimits")
        .map(|field| read_spend_limits(&field, found))
        .unwrap_or_default();
    Some(SubscriptionModelRef {
        path: item.path().to_owned(),
        name: name?.to_owned(),
        namespace: namespace?.to_owned(),
        token_limits,
        request_limits,
        billing: billing?,
        spend_limits,
    })
}

/// The most a spend limit may be: its counter (pico-units) must fit a Redis integer.
const MAX_SPEND_LIMIT: &str = "1000000";

/// `billingRate`: upstream's `perToken`, and our `promptPerToken` / `completionPerToken`
/// (each a decimal string per token in the billing currency; a missing side costs `perToken`).
fn read_billing_rate(field: &Field<'_>, found: &mut FieldIssues) -> Option<BillingRate> {
    let rate = field.object(found)?;
    let mut complete = true;
    let mut read = |key: &str, found: &mut FieldIssues| {
        let field = rate.optional(key)?;
        let text = field.string(found);
        if text.is_none() {
            complete = false;
        }
        match Amount::parse(text?) {
            Ok(amount) => Some(amount),
            Err(error) => {
                found.at(field.path(), error.to_string());
                complete = false;
                None
            }
        }
    };
    let billing = BillingRate {
        per_token: read("perToken", found),
        prompt_per_token: read("promptPerToken", found),
        completion_per_token: read("completionPerToken", found),
    };
    complete.then_some(billing)
}

/// `spendLimits: [{amount: "50.00", window: 720h}]`: the most one user may spend per window on
/// one subscription's model, in the billing currency.
fn read_spend_limits(field: &Field<'_>, found: &mut FieldIssues) -> Vec<SpendLimit> {
    let most = Amount::parse(MAX_SPEND_LIMIT).unwrap_or_default();
    field
        .items(found)
        .iter()
        .filter_map(|item| {
            let entry = item.object(found)?;
            let amount = entry.required("amount", found).and_then(|field| {
                let text = field.string(found)?;
                match Amount::parse(text) {
                    Ok(amount) if amount > Amount::ZERO && amount <= most => Some(amount),
                    Ok(_) => {
                        found.at(
                            field.path(),
                            format!(
                                "{text:?} is out of range (more than 0, at most {MAX_SPEND_LIMIT})"
                            ),
                        );
                        None
                    }
                    Err(error) => {
                        found.at(field.path(), error.to_string());
                        None
                    }
                }
            });
            let window = entry.required("window", found).and_then(|field| {
                let text = field.string(found)?;
                parse_window(text)
                    .map_err(|message| found.at(field.path(), message))
                    .ok()
            });
            Some(SpendLimit {
                amount: amount?,
                window: window?,
            })
        })
        .collect()
}

fn read_rate_limits(
    field: &Field<'_>,
    at_least_one: bool,
    found: &mut FieldIssues,
) -> Vec<RateLimit> {
    let items = field.items(found);
    if at_least_one && items.is_empty() && field.value().is_sequence() {
        found.at(field.path(), "must list at least one limit");
    }
    items
        .iter()
        .filter_map(|item| {
            let entry = item.object(found)?;
            let limit = entry
                .required("limit", found)
                .and_then(|field| read_limit(&field, found));
            let window = entry.required("window", found).and_then(|field| {
                let text = field.string(found)?;
                parse_window(text)
                    .map_err(|message| found.at(field.path(), message))
                    .ok()
            });
            Some(RateLimit {
                limit: limit?,
                window: window?,
            })
        })
        .collect()
}

fn read_limit(field: &Field<'_>, found: &mut FieldIssues) -> Option<u64> {
    let limit = field.integer(found)?;
    if (1..=MAX_LIMIT).contains(&limit) {
        u64::try_from(limit).ok()
    } else {
        found.at(
            field.path(),
            format!("{limit} is out of range (must be 1 to {MAX_LIMIT})"),
        );
        None
    }
}

fn read_auth_policy(spec: &Object<'_>, found: &mut FieldIssues) -> Option<AuthPolicySpec> {
    let model_refs = spec
        .required("modelRefs", found)
        .map(|field| {
            let items = field.items(found);
            if items.is_empty() && field.value().is_sequence() {
                found.at(field.path(), "must list at least one model");
            }
            items
                .iter()
                .filter_map(|item| read_auth_model_ref(item, found))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let subjects = spec
        .required("subjects", found)
        .and_then(|field| field.object(found))
        .and_then(|subjects| read_subjects(&subjects, found));
    let (users, groups) = subjects?;
    Some(AuthPolicySpec {
        model_refs,
        users,
        groups,
    })
}

fn read_auth_model_ref(item: &Field<'_>, found: &mut FieldIssues) -> Option<AuthModelRef> {
    match item.value() {
        Value::String(_) => Some(AuthModelRef {
            path: item.path().to_owned(),
            name: item.non_empty_string(found)?.to_owned(),
            namespace: None,
        }),
        Value::Mapping(_) => {
            let entry = item.object(found)?;
            let name = entry
                .required("name", found)
                .and_then(|field| field.non_empty_string(found));
            let namespace = entry
                .required("namespace", found)
                .and_then(|field| field.non_empty_string(found));
            Some(AuthModelRef {
                path: item.path().to_owned(),
                name: name?.to_owned(),
                namespace: Some(namespace?.to_owned()),
            })
        }
        other => {
            found.at(
                item.path(),
                format!(
                    "expected a model name or a mapping with name and namespace, found {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// Reads `users[]` and `groups[].name` (subscription owners and auth-policy subjects share this
/// shape) and insists on at least one of them, since an empty list grants nothing to anyone.
fn read_subjects(
    subjects: &Object<'_>,
    found: &mut FieldIssues,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut complete = true;
    let mut list = |key: &str, found: &mut FieldIssues| match subjects.optional(key) {
        Some(field) => {
            complete &= field.value().is_sequence();
            field.items(found)
        }
        None => Vec::new(),
    };
    let user_items = list("users", found);
    let group_items = list("groups", found);
    let users: Vec<String> = user_items
        .iter()
        .filter_map(|item| {
            let user = item.non_empty_string(found).map(str::to_owned);
            complete &= user.is_some();
            user
        })
        .collect();
    let groups: Vec<String> = group_items
        .iter()
        .filter_map(|item| {
            let group = item
                .object(found)
                .and_then(|entry| entry.required("name", found))
                .and_then(|field| {
                    checked(
                        &field,
                        field.string(found),
                        is_group_name,
                        GROUP_RULE,
                        found,
                    )
                })
                .map(str::to_owned);
            complete &= group.is_some();
            group
        })
        .collect();
    if users.is_empty() && groups.is_empty() && complete {
        found.at(subjects.path(), "must name at least one group or user");
    }
    complete.then_some((users, groups))
}

fn optional_string(object: &Object<'_>, key: &str, found: &mut FieldIssues) -> Option<String> {
    object
        .optional(key)
        .and_then(|field| field.string(found).map(str::to_owned))
}

const NAME_RULE: &str = "is not a valid name: use lowercase letters, digits, '-' and '.', \
     starting and ending with a letter or digit, at most 253 characters";
const NAMESPACE_RULE: &str = "is not a valid namespace: use lowercase letters, digits and '-', \
     starting and ending with a letter or digit, at most 63 characters";
const GROUP_RULE: &str = "is not a valid group name (must match ^[a-zA-Z0-9:._-]+$)";

/// Passes `text` through when `is_valid` accepts it, else reports `"text" <rule>`.
fn checked<'v>(
    field: &Field<'_>,
    text: Option<&'v str>,
    is_valid: fn(&str) -> bool,
    rule: &str,
    found: &mut FieldIssues,
) -> Option<&'v str> {
    let text = text?;
    if is_valid(text) {
        Some(text)
    } else {
        found.at(field.path(), format!("{text:?} {rule}"));
        None
    }
}

/// Kubernetes object names (RFC 1123 subdomains); they never contain '/', which is what lets
/// "namespace/name" references be split unambiguously.
fn is_object_name(name: &str) -> bool {
    is_rfc1123(name, 253, true)
}

fn is_namespace(namespace: &str) -> bool {
    is_rfc1123(namespace, 63, false)
}

fn is_rfc1123(text: &str, max_len: usize, dots_allowed: bool) -> bool {
    let bytes = text.as_bytes();
    let edge_ok = |byte: Option<&u8>| {
        byte.is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    };
    bytes.len() <= max_len
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|byte| {
            byte.is_ascii_lowercase()
                || byte.is_ascii_digit()
                || *byte == b'-'
                || (dots_allowed && *byte == b'.')
        })
}

fn is_group_name(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b":._-".contains(&byte))
}

fn is_http_url(text: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_in_seconds_minutes_and_hours_become_durations() {
        let windows = ["30s", "1m", "24h", "8784h"].map(parse_window);

        assert_eq!(
            windows,
            [
                Ok(Duration::from_secs(30)),
                Ok(Duration::from_secs(60)),
                Ok(Duration::from_secs(86_400)),
                Ok(Duration::from_secs(8784 * 3600)),
            ]
        );
    }

    #[test]
    fn windows_outside_the_pattern_are_rejected() {
        for window in [
            "", "m", "0m", "01m", "10000s", "1d", "1.5m", "-1m", "1 m", "1M", "1é",
        ] {
            let result = parse_window(window);

            assert_eq!(
                result,
                Err(format!("{window:?} does not match {WINDOW_PATTERN}")),
                "window {window:?}"
            );
        }
    }

    #[test]
    fn windows_longer_than_366_days_are_rejected() {
        let result = parse_window("8785h");

        assert_eq!(
            result,
            Err("\"8785h\" is longer than the maximum window of 8784h (366 days)".to_owned())
        );
    }

    #[test]
    fn group_names_follow_the_upstream_pattern() {
        let valid = ["system:authenticated", "premium-users", "a.b_c", "X9"];
        let invalid = ["", "premium users", "a/b", "ünicode", "a,b"];

        assert!(valid.iter().all(|group| is_group_name(group)));
        assert!(!invalid.iter().any(|group| is_group_name(group)));
    }

    #[test]
    fn object_names_and_namespaces_follow_rfc_1123() {
        assert!(is_object_name("qwen3.v2-instruct"));
        assert!(is_namespace("models-as-a-service"));
        assert!(!is_object_name("Qwen3"));
        assert!(!is_object_name("-qwen"));
        assert!(!is_object_name("llm/qwen3"));
        assert!(!is_namespace("my.namespace"));
        assert!(!is_namespace(&"a".repeat(64)));
    }
}
