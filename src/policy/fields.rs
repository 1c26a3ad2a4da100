//! Walks a parsed YAML value by field path, noting every type error instead of stopping at the first.

use serde_norway::{Mapping, Value};

/// Problems found in one document, each tied to the field path it was found at.
#[derive(Debug, Default)]
pub(super) struct FieldIssues {
    entries: Vec<(Option<String>, String)>,
}

impl FieldIssues {
    pub fn at(&mut self, path: &str, message: impl Into<String>) {
        let field = (!path.is_empty()).then(|| path.to_owned());
        self.entries.push((field, message.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn into_entries(self) -> Vec<(Option<String>, String)> {
        self.entries
    }
}

/// A value together with the path that led to it, e.g. `spec.modelRefs[0].name`.
#[derive(Debug, Clone)]
pub(super) struct Field<'v> {
    value: &'v Value,
    path: String,
}

/// A field already known to be a mapping, so that keys can be looked up in it.
#[derive(Debug, Clone)]
pub(super) struct Object<'v> {
    mapping: &'v Mapping,
    path: String,
}

impl<'v> Field<'v> {
    pub fn root(value: &'v Value) -> Self {
        Field {
            value,
            path: String::new(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn value(&self) -> &'v Value {
        self.value
    }

    pub fn object(&self, issues: &mut FieldIssues) -> Option<Object<'v>> {
        match self.value {
            Value::Mapping(mapping) => Some(Object {
                mapping,
                path: self.path.clone(),
            }),
            other => {
                issues.at(
                    &self.path,
                    format!("expected a mapping, found {}", describe(other)),
                );
                None
            }
        }
    }

    pub fn string(&self, issues: &mut FieldIssues) -> Option<&'v str> {
        match self.value {
            Value::String(text) => Some(text),
            other => {
                issues.at(
                    &self.path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A string with something other than whitespace in it, returned trimmed.
    pub fn non_empty_string(&self, issues: &mut FieldIssues) -> Option<&'v str> {
        let text = self.string(issues)?.trim();
        if text.is_empty() {
            issues.at(&self.path, "must not be empty");
            return None;
        }
        Some(text)
    }

    pub fn integer(&self, issues: &mut FieldIssues) -> Option<i64> {
        if let Value::Number(number) = self.value {
            if let Some(integer) = number.as_i64() {
                return Some(integer);
            }
            if number.as_u64().is_some() {
                issues.at(&self.path, format!("{number} is too large"));
                return None;
            }
        }
        issues.at(
            &self.path,
            format!("expected an integer, found {}", describe(self.value)),
        );
        None
    }

    /// The items of a list, each carrying its `[index]` path; anything else is reported.
    pub fn items(&self, issues: &mut FieldIssues) -> Vec<Field<'v>> {
        match self.value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(index, value)| Field {
                    value,
                    path: format!("{}[{index}]", self.path),
                })
                .collect(),
            other => {
                issues.at(
                    &self.path,
                    format!("expected a list, found {}", describe(other)),
                );
                Vec::new()
            }
        }
    }
}

impl<'v> Object<'v> {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The field under `key`; an explicit `null` counts as absent, as it does in Kubernetes.
    pub fn optional(&self, key: &str) -> Option<Field<'v>> {
        match self.mapping.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Field {
                value,
                path: self.child_path(key),
            }),
        }
    }

    pub fn required(&self, key: &str, issues: &mut FieldIssues) -> Option<Field<'v>> {
        let field = self.optional(key);
        if field.is_none() {
            issues.at(&self.child_path(key), "required field is missing");
        }
        field
    }

    /// The entries of a string-to-string map such as annotations or labels.
    pub fn string_entries(&self, issues: &mut FieldIssues) -> Vec<(&'v str, &'v str)> {
        let mut entries = Vec::new();
        for (key, value) in self.mapping {
            let Value::String(key) = key else {
                issues.at(
                    &self.path,
                    format!("keys must be strings, found {}", describe(key)),
                );
                continue;
            };
            let field = Field {
                value,
                path: format!("{}[{key:?}]", self.path),
            };
            if let Some(value) = field.string(issues) {
                entries.push((key.as_str(), value));
            }
        }
        entries
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// How a value is named in "expected X, found Y" messages.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Number(number) if number.is_f64() => format!("number {number}"),
        Value::Number(number) => format!("integer {number}"),
        Value::String(text) => format!("string {text:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Value {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn nested_paths_name_keys_and_list_positions() {
        let value = parse("spec:\n  modelRefs:\n    - name: 3\n");
        let mut issues = FieldIssues::default();

        let root = Field::root(&value).object(&mut issues).unwrap();
        let spec = root.required("spec", &mut issues).unwrap();
        let spec = spec.object(&mut issues).unwrap();
        let items = spec
            .required("modelRefs", &mut issues)
            .unwrap()
            .items(&mut issues);
        let item = items[0].object(&mut issues).unwrap();
        let name = item
            .required("name", &mut issues)
            .unwrap()
            .string(&mut issues);
        item.required("namespace", &mut issues);

        assert_eq!(name, None);
        assert_eq!(
            issues.into_entries(),
            [
                (
                    Some("spec.modelRefs[0].name".to_owned()),
                    "expected a string, found integer 3".to_owned()
                ),
                (
                    Some("spec.modelRefs[0].namespace".to_owned()),
                    "required field is missing".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn an_explicit_null_counts_as_missing() {
        let value = parse("priority: ~\n");
        let mut issues = FieldIssues::default();

        let object = Field::root(&value).object(&mut issues).unwrap();

        assert!(object.optional("priority").is_none());
    }

    #[test]
    fn map_entries_with_non_string_values_are_reported_by_key() {
        let value = parse("annotations:\n  a: x\n  b: [1]\n");
        let mut issues = FieldIssues::default();

        let root = Field::root(&value).object(&mut issues).unwrap();
        let annotations = root.required("annotations", &mut issues).unwrap();
        let entries = annotations
            .object(&mut issues)
            .unwrap()
            .string_entries(&mut issues);

        assert_eq!(entries, [("a", "x")]);
        assert_eq!(
            issues.into_entries(),
            [(
                Some("annotations[\"b\"]".to_owned()),
                "expected a string, found a list".to_owned()
            )]
        );
    }

    #[test]
    fn floats_and_huge_numbers_are_not_integers() {
        let value = parse("a: 1.5\nb: 18446744073709551615\n");
        let mut issues = FieldIssues::default();

        let root = Field::root(&value).object(&mut issues).unwrap();
        let a = root
            .required("a", &mut issues)
            .unwrap()
            .integer(&mut issues);
        let b = root
            .required("b", &mut issues)
            .unwrap()
            .integer(&mut issues);

        assert_eq!((a, b), (None, None));
        assert_eq!(
            issues.into_entries(),
            [
                (
                    Some("a".to_owned()),
                    "expected an integer, found number 1.5".to_owned()
                ),
                (
                    Some("b".to_owned()),
                    "18446744073709551615 is too large".to_owned()
                ),
            ]
        );
    }
}
