//! `GET /v1/usage/report`: the usage ledger grouped by day, hour, model, key, user, subscription,
//! cost center or organization, as paged JSON or a streamed CSV. The rules (bounds, who sees
//! what, cursors, CSV quoting) are `ledger::report`'s; this only translates.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, OpenAiError};
use super::extract::OpenAiCaller;
use super::openapi::OpenAiErrorBody;
use super::state::SharedState;
use crate::ledger::UsageCounts;
use crate::ledger::report::{
    COST_DECIMALS, GroupBy, ReportError, ReportFormat, ReportParams, ReportQuery, ReportRow,
    Viewer, csv_header, csv_line,
};
use crate::store::UsageStore;
use crate::store::served::ServedStore;

/// The sums of one group (or of the whole report).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetrics {
    /// Requests Check allowed.
    pub requests: u64,
    /// Requests refused with 429 for a request, token or spend limit.
    pub rate_limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of `totalTokens`, those of responses whose usage was (partly) estimated.
    pub estimated_tokens: u64,
    /// Decimal string in `currency`, six decimals.
    pub cost: String,
}

impl From<&UsageCounts> for UsageMetrics {
    fn from(counts: &UsageCounts) -> Self {
        Self {
            requests: counts.requests,
            rate_limited: counts.rate_limited,
            prompt_tokens: counts.prompt_tokens,
            completion_tokens: counts.completion_tokens,
            total_tokens: counts.total_tokens,
            estimated_tokens: counts.estimated_tokens,
            cost: counts.cost.to_decimal(COST_DECIMALS),
        }
    }
}

/// One group: the `groupBy` fields it was asked for, then its sums.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReportRow {
    /// `YYYY-MM-DD` (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// RFC 3339 at the hour (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour: Option<String>,
    /// `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The API key's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// `tokenMetadata.costCenter` when the usage was booked (empty: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    /// `tokenMetadata.organizationId` when the usage was booked (empty: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    #[serde(flatten)]
    pub metrics: UsageMetrics,
}

/// A page of the usage report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// Always `usage_report`.
    pub object: &'static str,
    /// The range actually reported, RFC 3339, half-open.
    pub from: String,
    pub to: String,
    pub group_by: Vec<&'static str>,
    /// ISO 4217 code of every `cost`.
    pub currency: String,
    pub data: Vec<UsageReportRow>,
    /// Over the whole range and filters, not only this page.
    pub totals: UsageMetrics,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Usage from the ledger (booked within seconds; see README *Usage ledger and reports*): your
/// own, or anyone's for admins. JSON pages with `nextCursor`, or with `format=csv` every row as
/// an RFC 4180 attachment (header row, CRLF lines).
#[utoipa::path(
    get,
    path = "/v1/usage/report",
    tag = "discovery",
    security(("bearer" = [])),
    params(
        ("from" = Option<String>, Query, description = "Start, inclusive: RFC 3339 or YYYY-MM-DD (UTC midnight). Default: `to` minus 30 days"),
        ("to" = Option<String>, Query, description = "End, exclusive: RFC 3339 or YYYY-MM-DD. Default: now. At most 400 days after `from`"),
        ("groupBy" = Option<String>, Query, description = "Comma-separated: day, hour, model, key, user, subscription, costCenter, organizationId (default day)"),
        ("format" = Option<String>, Query, description = "json (default, paged) or csv (every row, streamed, no cursor)"),
        ("user" = Option<String>, Query, description = "Admins: one user's usage. Others may name only themselves (else 403)"),
        ("subscription" = Option<String>, Query, description = "Only this subscription (namespace/name)"),
        ("model" = Option<String>, Query, description = "Only this model (namespace/name)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page (JSON only)"),
        ("limit" = Option<u32>, Query, description = "Rows per page, 1-10000 (default 1000; JSON only)"),
    ),
    responses(
        (status = 200, description = "A page of the report, or with format=csv the CSV file \
            (header row: the groupBy columns, then requests, rate_limited, prompt_tokens, \
            completion_tokens, total_tokens, estimated_tokens, cost)",
            content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A parameter is invalid; `param` names it", body = OpenAiErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = OpenAiErrorBody),
        (status = 403, description = "Another user's usage, and you are not an admin", body = OpenAiErrorBody),
        (status = 503, description = "The database is unavailable", body = OpenAiErrorBody),
    )
)]
pub(super) async fn usage_report(
    State(state): State<SharedState>,
    OpenAiCaller(caller): OpenAiCaller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, OpenAiError> {
    let params = report_params(pairs)?;
    let viewer = Viewer {
        username: caller.username.as_str(),
        admin: caller.is_admin(),
    };
    let query = ReportQuery::parse(&params, viewer, chrono::Utc::now()).map_err(ApiError::from)?;
    match query.format {
        ReportFormat::Json => json_report(&state, &query).await,
        ReportFormat::Csv => Ok(csv_report(state.store.clone(), query)),
    }
}

/// The known parameters from the query string; a repeated or unknown one is refused.
fn report_params(pairs: Vec<(String, String)>) -> Result<ReportParams, ApiError> {
    let mut params = ReportParams::default();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "from" => &mut params.from,
            "to" => &mut params.to,
            "groupBy" => &mut params.group_by,
            "format" => &mut params.format,
            "user" => &mut params.user,
            "subscription" => &mut params.subscription,
            "model" => &mut params.model,
            "cursor" => &mut params.cursor,
            "limit" => &mut params.limit,
            _ => return Err(ApiError::UsageReport(ReportError::UnknownParameter(name))),
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::UsageReport(ReportError::RepeatedParameter(name)));
        }
    }
    Ok(params)
}

async fn json_report(state: &SharedState, query: &ReportQuery) -> Result<Response, OpenAiError> {
    let (page, totals) = tokio::try_join!(
        state.store.usage_report(query),
        state.store.usage_totals(query)
    )
    .map_err(ApiError::Usage)?;
    let next_cursor = page
        .has_more
        .then(|| page.rows.last().map(|last| query.cursor_after(last)))
        .flatten();
    let report = UsageReport {
        object: "usage_report",
        from: query
            .from
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to: query.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        group_by: query.group_by.iter().map(|g| g.as_str()).collect(),
        currency: state.billing_currency.clone(),
        data: page
            .rows
            .iter()
            .map(|row| report_row(&query.group_by, row))
            .collect(),
        totals: UsageMetrics::from(&totals),
        next_cursor,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(report)).into_response())
}

fn report_row(group_by: &[GroupBy], row: &ReportRow) -> UsageReportRow {
    let mut out = UsageReportRow {
        day: None,
        hour: None,
        model: None,
        key: None,
        user: None,
        subscription: None,
        cost_center: None,
        organization_id: None,
        metrics: UsageMetrics::from(&row.counts),
    };
    for (group, value) in group_by.iter().zip(&row.groups) {
        let slot = match group {
            GroupBy::Day => &mut out.day,
            GroupBy::Hour => &mut out.hour,
            GroupBy::Model => &mut out.model,
            GroupBy::Key => &mut out.key,
            GroupBy::User => &mut out.user,
            GroupBy::Subscription => &mut out.subscription,
            GroupBy::CostCenter => &mut out.cost_center,
            GroupBy::OrganizationId => &mut out.organization_id,
        };
        *slot = Some(value.clone());
    }
    out
}

/// Every row as CSV, read page by page (keyset) while the body streams, so memory stays
/// bounded however long the report. A store failure after the header ends the body early
/// (the client sees a truncated transfer, never a silently short file that looks complete).
fn csv_report(store: Arc<ServedStore>, query: ReportQuery) -> Response {
    struct Pages {
        store: Arc<ServedStore>,
        query: ReportQuery,
        header_sent: bool,
        done: bool,
    }
    let pages = Pages {
        store,
        query,
        header_sent: false,
        done: false,
    };
    let file_name = format!(
        "attachment; filename=\"usage-{}-{}.csv\"",
        pages.query.from.format("%Y%m%dT%H%M%SZ"),
        pages.query.to.format("%Y%m%dT%H%M%SZ")
    );
    let stream = futures::stream::unfold(pages, |mut pages| async move {
        if !pages.header_sent {
            pages.header_sent = true;
            let header = Bytes::from(csv_header(&pages.query.group_by));
            return Some((Ok::<Bytes, std::io::Error>(header), pages));
        }
        if pages.done {
            return None;
        }
        match pages.store.usage_report(&pages.query).await {
            Ok(page) => {
                let mut chunk = String::new();
                for row in &page.rows {
                    chunk.push_str(&csv_line(row));
                }
                match (page.has_more, page.rows.last()) {
                    (true, Some(last)) => pages.query.after = Some(last.groups.clone()),
                    _ => pages.done = true,
                }
                Some((Ok(Bytes::from(chunk)), pages))
            }
            Err(error) => {
                tracing::warn!(%error, "usage CSV cut short: the ledger could not be read");
                pages.done = true;
                Some((Err(std::io::Error::other(error.to_string())), pages))
            }
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&file_name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
