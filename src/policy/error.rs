//! Errors reported when a policy cannot be read or does not validate.

use std::fmt;
use std::path::PathBuf;

/// Why a policy could not be loaded. Either way the caller keeps whatever policy it had before.
///
/// Only problems that leave the files unreadable as a whole (I/O, encoding, YAML syntax) reject
/// the policy: an object that parses but is wrong is left out of it instead
/// (see [`InvalidObject`]), so that one bad object cannot freeze every later change.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read at all.
    #[error("cannot read policy at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file could not be parsed; every problem found is listed, not just the first.
    #[error("{}", render_issues(.0))]
    Invalid(Vec<PolicyIssue>),
}

/// A MaaS object left out of the policy because it is invalid (a bad field, a model listed
/// twice, a duplicate name...); the rest of the policy applies without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidObject {
    /// `MaaSSubscription`, `MaaSAuthPolicy`, `MaaSModelRef`, or `unknown` when the document
    /// did not say.
    pub kind: String,
    /// Empty when the document did not get far enough to say.
    pub namespace: String,
    /// Empty when the document did not get far enough to say.
    pub name: String,
    /// Why it was left out; never empty.
    pub issues: Vec<PolicyIssue>,
}

impl InvalidObject {
    /// Every reason on one line, for logs.
    pub fn reason(&self) -> String {
        self.issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One problem in the manifests, located as precisely as was possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// The file the problem is in, as given to the loader.
    pub source: String,
    /// 1-based position of the YAML document within the file.
    pub document: Option<usize>,
    /// `Kind name` of the object, when it got far enough to be known.
    pub object: Option<String>,
    /// Dotted path of the offending field, e.g. `spec.modelRefs[0].tokenRateLimits[0].window`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.source)?;
        match (self.document, &self.object) {
            (Some(document), Some(object)) => write!(f, " document {document} ({object}):")?,
            (Some(document), None) => write!(f, " document {document}:")?,
            (None, Some(object)) => write!(f, " ({object}):")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Issues gathered from many files and passes, reported in file and document order at the end.
#[derive(Debug, Default)]
pub(super) struct IssueLog {
    entries: Vec<((usize, usize), PolicyIssue)>,
    /// Whether some file could not be parsed at all, which rejects the whole policy.
    unparsable: bool,
    /// (kind, namespace, name) of the object each document holds, as far as it is known.
    identities: Vec<((usize, usize), ObjectIdentity)>,
}

/// (kind, namespace, name).
type ObjectIdentity = (String, String, String);

impl IssueLog {
    /// `order` is (file position, document number); issues about one document stay together.
    /// The document's object is left out of the policy.
    pub fn push(&mut self, order: (usize, usize), issue: PolicyIssue) {
        self.entries.push((order, issue));
    }

    /// A file (or the rest of it from one document on) could not be parsed at all.
    pub fn push_unparsable(&mut self, order: (usize, usize), issue: PolicyIssue) {
        self.unparsable = true;
        self.entries.push((order, issue));
    }

    /// Records which object the document at `order` holds, for [`IssueLog::into_invalid_objects`].
    pub fn identify(&mut self, order: (usize, usize), kind: &str, namespace: &str, name: &str) {
        self.identities.push((
            order,
            (kind.to_owned(), namespace.to_owned(), name.to_owned()),
        ));
    }

    pub fn is_unparsable(&self) -> bool {
        self.unparsable
    }

    pub fn into_sorted(mut self) -> Vec<PolicyIssue> {
        // Stable, so issues within a document keep the order the checks found them in.
        self.entries.sort_by_key(|(order, _)| *order);
        self.entries.into_iter().map(|(_, issue)| issue).collect()
    }

    /// One [`InvalidObject`] per document with issues, in file and document order.
    pub fn into_invalid_objects(mut self) -> Vec<InvalidObject> {
        self.entries.sort_by_key(|(order, _)| *order);
        let identities: std::collections::HashMap<_, _> = self.identities.into_iter().collect();
        let mut objects: Vec<((usize, usize), InvalidObject)> = Vec::new();
        for (order, issue) in self.entries {
            match objects.last_mut() {
                Some((last, object)) if *last == order => object.issues.push(issue),
                _ => {
                    let (kind, namespace, name) = identities
                        .get(&order)
                        .cloned()
                        .unwrap_or_else(|| ("unknown".to_owned(), String::new(), String::new()));
                    objects.push((
                        order,
                        InvalidObject {
                            kind,
                            namespace,
                            name,
                            issues: vec![issue],
                        },
                    ));
                }
            }
        }
        objects.into_iter().map(|(_, object)| object).collect()
    }
}

fn render_issues(issues: &[PolicyIssue]) -> String {
    let count = issues.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut text = format!("invalid policy ({count} {noun}):");
    for issue in issues {
        text.push('\n');
        text.push_str(&issue.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_reads_as_file_document_object_field_and_message() {
        let issue = PolicyIssue {
            source: "subscriptions.yaml".to_owned(),
            document: Some(2),
            object: Some("MaaSSubscription free".to_owned()),
            field: Some("spec.priority".to_owned()),
            message: "expected an integer, found string \"high\"".to_owned(),
        };

        let text = issue.to_string();

        assert_eq!(
            text,
            "subscriptions.yaml: document 2 (MaaSSubscription free): spec.priority: expected an integer, found string \"high\""
        );
    }

    #[test]
    fn an_invalid_policy_lists_one_issue_per_line() {
        let issue = |message: &str| PolicyIssue {
            source: "a.yaml".to_owned(),
            document: None,
            object: None,
            field: None,
            message: message.to_owned(),
        };
        let error = PolicyError::Invalid(vec![issue("first"), issue("second")]);

        let text = error.to_string();

        assert_eq!(
            text,
            "invalid policy (2 problems):\na.yaml: first\na.yaml: second"
        );
    }
}
