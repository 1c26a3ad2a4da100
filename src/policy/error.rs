//! Errors reported when a policy cannot be read or does not validate.

use std::fmt;
use std::path::PathBuf;

/// Why a policy could not be loaded. Either way the caller keeps whatever policy it had before.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read at all.
    #[error("cannot read policy at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifests were read but are wrong; every problem found is listed, not just the first.
    #[error("{}", render_issues(.0))]
    Invalid(Vec<PolicyIssue>),
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
}

impl IssueLog {
    /// `order` is (file position, document number); issues about one document stay together.
    pub fn push(&mut self, order: (usize, usize), issue: PolicyIssue) {
        self.entries.push((order, issue));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn into_sorted(mut self) -> Vec<PolicyIssue> {
        // Stable, so issues within a document keep the order the checks found them in.
        self.entries.sort_by_key(|(order, _)| *order);
        self.entries.into_iter().map(|(_, issue)| issue).collect()
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
