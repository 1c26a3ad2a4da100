//! The usage report's rules: which query parameters are valid, who may see what, how rows are
//! grouped, paged and written as CSV. The store runs the query; the HTTP edge only translates.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::{UsageCounts, UsageKey};

/// The longest range one report may cover.
pub const MAX_RANGE_DAYS: i64 = 400;
/// The range when `from` is not given: 30 days before `to`.
pub const DEFAULT_RANGE_DAYS: i64 = 30;
/// Rows per JSON page when `limit` is not given, and the most one page may hold.
pub const DEFAULT_PAGE_ROWS: usize = 1000;
pub const MAX_PAGE_ROWS: usize = 10_000;
/// Longest accepted text of a filter or cursor: nothing legitimate is longer.
const MAX_PARAMETER_BYTES: usize = 2048;

/// What a report may group by; the wire name is also the JSON field and the CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Day,
    Hour,
    Model,
    Key,
    User,
    Subscription,
    CostCenter,
    OrganizationId,
}

impl GroupBy {
    pub const ALL: [GroupBy; 8] = [
        GroupBy::Day,
        GroupBy::Hour,
        GroupBy::Model,
        GroupBy::Key,
        GroupBy::User,
        GroupBy::Subscription,
        GroupBy::CostCenter,
        GroupBy::OrganizationId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Subscription => "subscription",
            GroupBy::CostCenter => "costCenter",
            GroupBy::OrganizationId => "organizationId",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|group| group.as_str() == text)
    }
}

/// The report's query parameters as the client sent them (all optional text).
#[derive(Debug, Clone, Default)]
pub struct ReportParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Option<String>,
    pub format: Option<String>,
    pub user: Option<String>,
    pub subscription: Option<String>,
    pub model: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// JSON (paged) or CSV (every row, streamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
}

/// Who asks: their username, and whether they may see everyone's usage.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub username: &'a str,
    pub admin: bool,
}

/// A validated report query. `user` is always set for a non-admin (to themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Vec<GroupBy>,
    pub format: ReportFormat,
    pub user: Option<String>,
    pub subscription: Option<String>,
    pub model: Option<String>,
    /// Rows strictly after these group values (in `group_by` order).
    pub after: Option<Vec<String>>,
    /// Rows per page (JSON); CSV pages internally at [`MAX_PAGE_ROWS`].
    pub limit: usize,
}

/// One row of a report: its group values (in `group_by` order) and the sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub groups: Vec<String>,
    pub counts: UsageCounts,
}

/// A report parameter the client must fix (400), or a user it may not see (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("{parameter}={value:?} is not an RFC 3339 timestamp or a YYYY-MM-DD date")]
    InvalidTime {
        parameter: &'static str,
        value: String,
    },
    #[error("from must be before to (the range is [from, to))")]
    EmptyRange,
    #[error("the range is longer than {MAX_RANGE_DAYS} days; ask for several shorter ranges")]
    RangeTooLong,
    #[error(
        "groupBy={0:?} is not one of day, hour, model, key, user, subscription, costCenter, organizationId"
    )]
    UnknownGroupBy(String),
    #[error("groupBy names {0:?} twice")]
    DuplicateGroupBy(String),
    #[error("format={0:?} is not json or csv")]
    UnknownFormat(String),
    #[error("limit={0:?} is not a number from 1 to {MAX_PAGE_ROWS}")]
    InvalidLimit(String),
    #[error("cursor is not one this report returned (it belongs to the same groupBy)")]
    InvalidCursor,
    #[error("cursor is only for format=json (CSV returns every row)")]
    CursorWithCsv,
    #[error("{0} is too long")]
    TooLong(&'static str),
    #[error("only an admin may see another user's usage")]
    OtherUser,
    #[error(
        "unknown parameter {0:?} (known: from, to, groupBy, format, user, subscription, model, cursor, limit)"
    )]
    UnknownParameter(String),
    #[error("parameter {0:?} is given more than once")]
    RepeatedParameter(String),
}

impl ReportError {
    /// 403 rather than 400.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ReportError::OtherUser)
    }

    /// The parameter at fault (OpenAI's `param`).
    pub fn parameter(&self) -> &'static str {
        match self {
            ReportError::InvalidTime { parameter, .. } => parameter,
            ReportError::EmptyRange | ReportError::RangeTooLong => "from",
            ReportError::UnknownGroupBy(_) | ReportError::DuplicateGroupBy(_) => "groupBy",
            ReportError::UnknownFormat(_) => "format",
            ReportError::InvalidLimit(_) => "limit",
            ReportError::InvalidCursor | ReportError::CursorWithCsv => "cursor",
            ReportError::TooLong(parameter) => parameter,
            ReportError::OtherUser => "user",
            ReportError::UnknownParameter(_) | ReportError::RepeatedParameter(_) => "query",
        }
    }
}

impl ReportQuery {
    /// Validates `params` for `viewer` at `now`.
    pub fn parse(
        params: &ReportParams,
        viewer: Viewer<'_>,
        now: DateTime<Utc>,
    ) -> Result<Self, ReportError> {
        for (name, value) in [
            ("user", &params.user),
            ("subscription", &params.subscription),
            ("model", &params.model),
            ("cursor", &params.cursor),
            ("groupBy", &params.group_by),
            ("from", &params.from),
            ("to", &params.to),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.len() > MAX_PARAMETER_BYTES)
            {
                return Err(ReportError::TooLong(name));
            }
        }
        let to = match non_empty(&params.to) {
            Some(text) => parse_time("to", text)?,
            None => now,
        };
        let from = match non_empty(&params.from) {
            Some(text) => parse_time("from", text)?,
            None => to - chrono::Duration::days(DEFAULT_RANGE_DAYS),
        };
        if from >= to {
            return Err(ReportError::EmptyRange);
        }
        if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(ReportError::RangeTooLong);
        }
        let group_by = parse_group_by(params.group_by.as_deref())?;
        let format = match params.format.as_deref().map(str::trim) {
            None | Some("") | Some("json") => ReportFormat::Json,
            Some("csv") => ReportFormat::Csv,
            Some(other) => return Err(ReportError::UnknownFormat(other.to_owned())),
        };
        let limit = match non_empty(&params.limit) {
            None => DEFAULT_PAGE_ROWS,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_ROWS).contains(n))
                .ok_or_else(|| ReportError::InvalidLimit(text.to_owned()))?,
        };
        let user = match (non_empty(&params.user), viewer.admin) {
            (Some(user), true) => Some(user.to_owned()),
            (None, true) => None,
            (Some(user), false) if user != viewer.username => return Err(ReportError::OtherUser),
            (_, false) => Some(viewer.username.to_owned()),
        };
        let after = match non_empty(&params.cursor) {
            None => None,
            Some(_) if format == ReportFormat::Csv => return Err(ReportError::CursorWithCsv),
            Some(cursor) => Some(decode_cursor(cursor, &group_by)?),
        };
        Ok(Self {
            from,
            to,
            group_by,
            format,
            user,
            subscription: non_empty(&params.subscription).map(str::to_owned),
            model: non_empty(&params.model).map(str::to_owned),
            after,
            limit: match format {
                ReportFormat::Json => limit,
                ReportFormat::Csv => MAX_PAGE_ROWS,
            },
        })
    }

    /// The cursor that continues after `last` (the last row of a full page).
    pub fn cursor_after(&self, last: &ReportRow) -> String {
        let groups: Vec<&str> = self.group_by.iter().map(|g| g.as_str()).collect();
        let body = serde_json::json!({ "g": groups, "a": last.groups });
        URL_SAFE_NO_PAD.encode(body.to_string())
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_time(parameter: &'static str, text: &str) -> Result<DateTime<Utc>, ReportError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|_| text.len() == 10)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| Utc.from_utc_datetime(&midnight))
        .ok_or_else(|| ReportError::InvalidTime {
            parameter,
            value: text.to_owned(),
        })
}

fn parse_group_by(text: Option<&str>) -> Result<Vec<GroupBy>, ReportError> {
    let text = match text {
        None => return Ok(vec![GroupBy::Day]),
        Some(text) => text,
    };
    let mut groups = Vec::new();
    for name in text.split(',').map(str::trim) {
        let group =
            GroupBy::parse(name).ok_or_else(|| ReportError::UnknownGroupBy(name.to_owned()))?;
        if groups.contains(&group) {
            return Err(ReportError::DuplicateGroupBy(name.to_owned()));
        }
        groups.push(group);
    }
    Ok(groups)
}

fn decode_cursor(cursor: &str, group_by: &[GroupBy]) -> Result<Vec<String>, ReportError> {
    #[derive(serde::Deserialize)]
    struct Cursor {
        g: Vec<String>,
        a: Vec<String>,
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| ReportError::InvalidCursor)?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| ReportError::InvalidCursor)?;
    let same_groups = cursor.g.len() == group_by.len()
        && cursor.g.iter().zip(group_by).all(|(a, b)| a == b.as_str());
    if !same_groups || cursor.a.len() != group_by.len() {
        return Err(ReportError::InvalidCursor);
    }
    Ok(cursor.a)
}

/// The value of `group` for a stored row, as the PostgreSQL store's SQL computes it.
pub fn group_value(group: GroupBy, key: &UsageKey) -> String {
    let hour = DateTime::from_timestamp(key.hour, 0).unwrap_or_default();
    match group {
        GroupBy::Day => hour.format("%Y-%m-%d").to_string(),
        GroupBy::Hour => hour.format("%Y-%m-%dT%H:00:00Z").to_string(),
        GroupBy::Model => key.model.clone(),
        GroupBy::Key => key.key_id.clone(),
        GroupBy::User => key.user.clone(),
        GroupBy::Subscription => key.subscription.clone(),
        GroupBy::CostCenter => key.cost_center.clone(),
        GroupBy::OrganizationId => key.organization_id.clone(),
    }
}

/// Groups `rows` as `query` asks (range, filters, groups in byte order), every group: what a
/// store without SQL (the in-memory one) answers with.
pub fn aggregate<'a>(
    rows: impl IntoIterator<Item = (&'a UsageKey, &'a UsageCounts)>,
    query: &ReportQuery,
) -> Vec<ReportRow> {
    let (from, to) = (query.from.timestamp(), query.to.timestamp());
    let wanted =
        |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
    let mut groups: std::collections::BTreeMap<Vec<String>, UsageCounts> = Default::default();
    for (key, counts) in rows {
        if key.hour < from
            || key.hour >= to
            || !wanted(&query.user, &key.user)
            || !wanted(&query.subscription, &key.subscription)
            || !wanted(&query.model, &key.model)
        {
            continue;
        }
        let values = query
            .group_by
            .iter()
            .map(|g| group_value(*g, key))
            .collect();
        groups.entry(values).or_default().add(counts);
    }
    groups
        .into_iter()
        .map(|(groups, counts)| ReportRow { groups, counts })
        .collect()
}

/// The metric columns of the CSV, after the group columns.
pub const CSV_METRIC_COLUMNS: [&str; 7] = [
    "requests",
    "rate_limited",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_tokens",
    "cost",
];

/// Decimals a report shows a cost with.
pub const COST_DECIMALS: u32 = 6;

/// The CSV header line (with CRLF, as RFC 4180 writes lines).
pub fn csv_header(group_by: &[GroupBy]) -> String {
    let columns: Vec<&str> = group_by
        .iter()
        .map(|g| g.as_str())
        .chain(CSV_METRIC_COLUMNS)
        .collect();
    let mut line = columns.join(",");
    line.push_str("\r\n");
    line
}

/// One CSV line (with CRLF) for `row`.
pub fn csv_line(row: &ReportRow) -> String {
    let counts = &row.counts;
    let mut fields: Vec<String> = row.groups.iter().map(|value| csv_field(value)).collect();
    fields.extend([
        counts.requests.to_string(),
        counts.rate_limited.to_string(),
        counts.prompt_tokens.to_string(),
        counts.completion_tokens.to_string(),
        counts.total_tokens.to_string(),
        counts.estimated_tokens.to_string(),
        counts.cost.to_decimal(COST_DECIMALS),
    ]);
    let mut line = fields.join(",");
    line.push_str("\r\n");
    line
}

/// RFC 4180: a field with a comma, quote, CR or LF is quoted, its quotes doubled. A field that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading `'`:
/// group values such as user names and labels come from users.
fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
    }

    const ALICE: Viewer<'static> = Viewer {
        username: "alice",
        admin: false,
    };
    const ADMIN: Viewer<'static> = Viewer {
        username: "root",
        admin: true,
    };

    fn parse(params: ReportParams, viewer: Viewer<'_>) -> Result<ReportQuery, ReportError> {
        ReportQuery::parse(&params, viewer, now())
    }

    #[test]
    fn a_report_defaults_to_the_last_thirty_days_by_day_for_the_caller_alone() {
        let query = parse(ReportParams::default(), ALICE).unwrap();
        assert_eq!(query.to, now());
        assert_eq!(query.from, now() - chrono::Duration::days(30));
        assert_eq!(query.group_by, vec![GroupBy::Day]);
        assert_eq!(query.format, ReportFormat::Json);
        assert_eq!(query.user.as_deref(), Some("alice"));
        assert_eq!(query.limit, DEFAULT_PAGE_ROWS);
    }

    #[test]
    fn dates_and_timestamps_are_both_accepted_as_bounds() {
        let query = parse(
            ReportParams {
                from: Some("2026-11-01".into()),
                to: Some("2026-11-02T06:30:00+01:00".into()),
                ..Default::default()
            },
            ALICE,
        )
        .unwrap();
        assert_eq!(
            query.from,
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            query.to,
            Utc.with_ymd_and_hms(2026, 11, 2, 5, 30, 0).unwrap()
        );
    }

    #[test]
    fn bad_bounds_are_refused_naming_the_parameter() {
        let bad = |from: &str, to: &str| {
            parse(
                ReportParams {
                    from: Some(from.into()),
                    to: Some(to.into()),
                    ..Default::default()
                },
                ALICE,
            )
            .unwrap_err()
        };
        assert!(matches!(
            bad("yesterday", "2026-11-02"),
            ReportError::InvalidTime {
                parameter: "from",
                ..
            }
        ));
        assert!(matches!(
            bad("2026-11-01", "2026-13-01"),
            ReportError::InvalidTime {
                parameter: "to",
                ..
            }
        ));
        assert!(matches!(
            bad("2026-1-1", "2026-11-02"),
            ReportError::InvalidTime { .. }
        ));
        assert_eq!(bad("2026-11-02", "2026-11-02"), ReportError::EmptyRange);
        assert_eq!(bad("2026-11-03", "2026-11-02"), ReportError::EmptyRange);
        assert_eq!(bad("2025-01-01", "2026-11-02"), ReportError::RangeTooLong);
        assert_eq!(bad("0001-01-01", "9999-12-31"), ReportError::RangeTooLong);
    }

    #[test]
    fn group_by_takes_known_names_only_once_each() {
        let group = |text: &str| {
            parse(
                ReportParams {
                    group_by: Some(text.into()),
                    ..Default::default()
                },
                ALICE,
            )
        };
        assert_eq!(
            group("day,model,costCenter").unwrap().group_by,
            vec![GroupBy::Day, GroupBy::Model, GroupBy::CostCenter]
        );
        assert_eq!(
            group("model;DROP TABLE usage_ledger").unwrap_err(),
            ReportError::UnknownGroupBy("model;DROP TABLE usage_ledger".into())
        );
        assert_eq!(
            group("Day").unwrap_err(),
            ReportError::UnknownGroupBy("Day".into())
        );
        assert_eq!(
            group("").unwrap_err(),
            ReportError::UnknownGroupBy(String::new())
        );
        assert_eq!(
            group("model,model").unwrap_err(),
            ReportError::DuplicateGroupBy("model".into())
        );
    }

    #[test]
    fn a_non_admin_sees_only_their_own_usage_and_an_admin_anyone_s() {
        let for_user = |user: &str, viewer| {
            parse(
                ReportParams {
                    user: Some(user.into()),
                    ..Default::default()
                },
                viewer,
            )
        };
        assert_eq!(for_user("bob", ALICE).unwrap_err(), ReportError::OtherUser);
        assert!(ReportError::OtherUser.is_forbidden());
        assert_eq!(
            for_user("alice", ALICE).unwrap().user.as_deref(),
            Some("alice")
        );
        assert_eq!(for_user("bob", ADMIN).unwrap().user.as_deref(), Some("bob"));
        assert_eq!(parse(ReportParams::default(), ADMIN).unwrap().user, None);
    }

    #[test]
    fn a_cursor_continues_only_the_report_it_came_from() {
        let query = parse(
            ReportParams {
                group_by: Some("day,model".into()),
                ..Default::default()
            },
            ALICE,
        )
        .unwrap();
        let cursor = query.cursor_after(&ReportRow {
            groups: vec!["2026-11-01".into(), "llm/a,b\"c".into()],
            counts: UsageCounts::default(),
        });
        let next = parse(
            ReportParams {
                group_by: Some("day,model".into()),
                cursor: Some(cursor.clone()),
                ..Default::default()
            },
            ALICE,
        )
        .unwrap();
        assert_eq!(
            next.after,
            Some(vec!["2026-11-01".to_owned(), "llm/a,b\"c".to_owned()])
        );
        for (group_by, cursor) in [
            ("day", cursor.as_str()),
            ("day,model", "not-base64!"),
            ("day,model", "e30"),
        ] {
            let refused = parse(
                ReportParams {
                    group_by: Some(group_by.into()),
                    cursor: Some(cursor.into()),
                    ..Default::default()
                },
                ALICE,
            );
            assert_eq!(
                refused.unwrap_err(),
                ReportError::InvalidCursor,
                "{group_by} {cursor}"
            );
        }
    }

    #[test]
    fn limits_and_formats_are_checked() {
        let with = |limit: &str, format: &str| {
            parse(
                ReportParams {
                    limit: Some(limit.into()),
                    format: Some(format.into()),
                    ..Default::default()
                },
                ALICE,
            )
        };
        assert_eq!(with("10", "json").unwrap().limit, 10);
        assert_eq!(
            with("0", "json").unwrap_err(),
            ReportError::InvalidLimit("0".into())
        );
        assert_eq!(
            with("10001", "json").unwrap_err(),
            ReportError::InvalidLimit("10001".into())
        );
        assert_eq!(
            with("-1", "json").unwrap_err(),
            ReportError::InvalidLimit("-1".into())
        );
        assert_eq!(
            with("10", "xml").unwrap_err(),
            ReportError::UnknownFormat("xml".into())
        );
        assert_eq!(with("10", "csv").unwrap().format, ReportFormat::Csv);
    }

    #[test]
    fn csv_fields_are_quoted_by_rfc_4180_and_formulas_defused() {
        let row = ReportRow {
            groups: vec![
                "a,b".into(),
                "say \"hi\"".into(),
                "=cmd()".into(),
                "line\nbreak".into(),
            ],
            counts: UsageCounts {
                requests: 2,
                cost: crate::money::Amount::from_pico(1_500_000_000),
                ..UsageCounts::default()
            },
        };
        assert_eq!(
            csv_line(&row),
            "\"a,b\",\"say \"\"hi\"\"\",'=cmd(),\"line\nbreak\",2,0,0,0,0,0,0.001500\r\n"
        );
        assert_eq!(
            csv_header(&[GroupBy::Day, GroupBy::CostCenter]),
            "day,costCenter,requests,rate_limited,prompt_tokens,completion_tokens,total_tokens,estimated_tokens,cost\r\n"
        );
    }

    #[test]
    fn aggregate_filters_the_range_and_user_and_groups_in_byte_order() {
        let key = |hour: i64, user: &str, model: &str| UsageKey {
            hour,
            user: user.into(),
            key_id: "k".into(),
            subscription: "maas/team".into(),
            model: model.into(),
            organization_id: String::new(),
            cost_center: String::new(),
        };
        let one = UsageCounts {
            requests: 1,
            ..UsageCounts::default()
        };
        let start = now().timestamp() - 3600;
        let rows = [
            (key(start, "alice", "llm/b"), one),
            (key(start, "alice", "llm/a"), one),
            (key(start + 3600, "alice", "llm/a"), one),
            (key(start - 40 * 86_400, "alice", "llm/a"), one),
            (key(start, "bob", "llm/a"), one),
        ];
        let query = parse(
            ReportParams {
                group_by: Some("model".into()),
                ..Default::default()
            },
            ALICE,
        )
        .unwrap();

        let report = aggregate(rows.iter().map(|(k, c)| (k, c)), &query);

        let summary: Vec<(String, u64)> = report
            .iter()
            .map(|row| (row.groups[0].clone(), row.counts.requests))
            .collect();
        // The hour starting at `to` is outside [from, to); bob's and the 40-day-old row too.
        assert_eq!(summary, [("llm/a".to_owned(), 1), ("llm/b".to_owned(), 1)]);
        assert_eq!(
            group_value(GroupBy::Hour, &key(start, "alice", "m")),
            "2026-11-29T11:00:00Z"
        );
    }
}
