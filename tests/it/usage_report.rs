//! `GET /v1/usage/report` on the real server and PostgreSQL: grouping, totals and costs, paging,
//! CSV that Python's `csv` reads back, every invalid parameter's error, and the attacks (another
//! user's report, SQL in groupBy, huge ranges, tampered cursors).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::rest_support::*;
use crate::support::TestDb;

/// Books one ledger row as the write-behind would (hour is RFC 3339 at the hour).
#[allow(clippy::too_many_arguments)]
async fn book(
    db: &TestDb,
    hour: &str,
    user: &str,
    key: &str,
    model: &str,
    cost_center: &str,
    requests: i64,
    tokens: (i64, i64),
    cost_pico: i64,
) {
    db.client()
        .await
        .execute(
            "INSERT INTO usage_ledger (hour, tenant, username, key_id, subscription, model, \
             organization_id, cost_center, requests, rate_limited, prompt_tokens, completion_tokens, \
             total_tokens, estimated_tokens, cost_pico) \
             VALUES ($1::text::timestamptz, 'models-as-a-service', $2, $3, 'models-as-a-service/free', $4, \
             'acme', $5, $6::int8, 1, $7::int8, $8::int8, $7::int8 + $8::int8, 0, $9::int8::numeric)",
            &[
                &hour,
                &user,
                &key,
                &model,
                &cost_center,
                &requests,
                &tokens.0,
                &tokens.1,
                &cost_pico,
            ],
        )
        .await
        .unwrap();
}

/// Alice: two days, two models; bob: one day. Costs in pico-units (1 500 000 000 = 0.0015).
async fn seed(db: &TestDb) {
    book(
        db,
        "2026-11-01T10:00:00Z",
        "alice",
        "ka",
        "llm/a",
        "cc-1",
        3,
        (10, 5),
        1_500_000_000,
    )
    .await;
    book(
        db,
        "2026-11-01T11:00:00Z",
        "alice",
        "ka",
        "llm/b",
        "cc-1",
        2,
        (4, 4),
        500_000_000,
    )
    .await;
    book(
        db,
        "2026-11-02T00:00:00Z",
        "alice",
        "kb",
        "llm/a",
        "cc-1",
        1,
        (1, 1),
        1,
    )
    .await;
    book(
        db,
        "2026-11-01T10:00:00Z",
        "bob",
        "kc",
        "llm/a",
        "cc-2",
        7,
        (70, 30),
        7_000_000_000,
    )
    .await;
}

const RANGE: &str = "from=2026-11-01&to=2026-11-03";

async fn report(server: &RestServer, token: &str, query: &str) -> Reply {
    server
        .call(Method::GET, &format!("/v1/usage/report?{query}"))
        .token(token)
        .send()
        .await
}

#[tokio::test]
async fn a_user_sees_their_own_usage_by_day_and_model_with_totals_and_exact_costs() {
    let server = RestServer::start().await;
    seed(&server.test.db).await;

    let reply = report(&server, ALICE, &format!("{RANGE}&groupBy=day,model")).await;

    reply.assert_exactly(
        200,
        json!({
            "object": "usage_report",
            "from": "2026-11-01T00:00:00Z",
            "to": "2026-11-03T00:00:00Z",
            "groupBy": ["day", "model"],
            "currency": "USD",
            "data": [
                {"day": "2026-11-01", "model": "llm/a", "requests": 3, "rateLimited": 1,
                 "promptTokens": 10, "completionTokens": 5, "totalTokens": 15,
                 "estimatedTokens": 0, "cost": "0.001500"},
                {"day": "2026-11-01", "model": "llm/b", "requests": 2, "rateLimited": 1,
                 "promptTokens": 4, "completionTokens": 4, "totalTokens": 8,
                 "estimatedTokens": 0, "cost": "0.000500"},
                {"day": "2026-11-02", "model": "llm/a", "requests": 1, "rateLimited": 1,
                 "promptTokens": 1, "completionTokens": 1, "totalTokens": 2,
                 "estimatedTokens": 0, "cost": "0.000000"},
            ],
            "totals": {"requests": 6, "rateLimited": 3, "promptTokens": 15,
                       "completionTokens": 10, "totalTokens": 25, "estimatedTokens": 0,
                       "cost": "0.002000"},
            "nextCursor": null,
        }),
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn an_admin_sees_everyone_by_cost_center_and_may_filter_one_user() {
    let server = RestServer::start().await;
    seed(&server.test.db).await;

    let everyone = report(&server, ADMIN, &format!("{RANGE}&groupBy=costCenter,user")).await;
    let bob = report(&server, ADMIN, &format!("{RANGE}&groupBy=hour&user=bob")).await;

    let rows: Vec<(String, String, u64)> = everyone.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["costCenter"].as_str().unwrap().to_owned(),
                row["user"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("cc-1".to_owned(), "alice".to_owned(), 6),
            ("cc-2".to_owned(), "bob".to_owned(), 7)
        ]
    );
    assert_eq!(everyone.json["totals"]["cost"], "0.009000");
    let bob = bob.assert_status(200);
    assert_eq!(
        bob["data"],
        json!([{"hour": "2026-11-01T10:00:00Z", "requests": 7,
        "rateLimited": 1, "promptTokens": 70, "completionTokens": 30, "totalTokens": 100,
        "estimatedTokens": 0, "cost": "0.007000"}])
    );
}

#[tokio::test]
async fn pages_follow_the_cursor_to_every_row_exactly_once() {
    let server = RestServer::start().await;
    seed(&server.test.db).await;
    let mut seen = Vec::new();
    let mut query = format!("{RANGE}&groupBy=user,key,model&limit=1");
    for _ in 0..10 {
        let page = report(&server, ADMIN, &query).await;
        let page = page.assert_status(200);
        assert_eq!(
            page["totals"]["requests"], 13,
            "totals cover the whole range on every page"
        );
        for row in page["data"].as_array().unwrap() {
            seen.push(format!("{}/{}/{}", row["user"], row["key"], row["model"]).replace('"', ""));
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => {
                query = format!("{RANGE}&groupBy=user,key,model&limit=1&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "alice/ka/llm/a",
            "alice/ka/llm/b",
            "alice/kb/llm/a",
            "bob/kc/llm/a"
        ]
    );
}

#[tokio::test]
async fn the_csv_export_is_rfc_4180_and_python_csv_reads_it_back_exactly() {
    let server = RestServer::start().await;
    let db = &server.test.db;
    let awkward = [
        "plain",
        "with,comma",
        "with \"quotes\"",
        "two\nlines",
        "=1+1",
        "ünïcødé",
    ];
    for (i, cost_center) in awkward.iter().enumerate() {
        book(
            db,
            "2026-11-01T10:00:00Z",
            "alice",
            "k",
            "llm/a",
            cost_center,
            i as i64 + 1,
            (1, 2),
            3_000_000,
        )
        .await;
    }

    let reply = report(
        &server,
        ADMIN,
        &format!("{RANGE}&groupBy=costCenter&format=csv"),
    )
    .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(
        reply.header("content-disposition"),
        Some("attachment; filename=\"usage-20261101T000000Z-20261103T000000Z.csv\"")
    );
    let parsed = parse_with_python_csv(&reply.text);
    assert_eq!(
        parsed[0],
        json!([
            "costCenter",
            "requests",
            "rate_limited",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "estimated_tokens",
            "cost"
        ])
    );
    let mut expected: Vec<(String, String)> = awkward
        .iter()
        .enumerate()
        .map(|(i, cc)| {
            // A spreadsheet would run "=1+1": the export defuses it with a leading quote.
            let shown = if cc.starts_with('=') {
                format!("'{cc}")
            } else {
                (*cc).to_owned()
            };
            (shown, (i + 1).to_string())
        })
        .collect();
    expected.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let actual: Vec<(String, String)> = parsed[1..]
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(actual, expected);
    assert!(
        parsed[1..]
            .iter()
            .all(|row| row[7] == "0.000003" && row[4] == "2")
    );
    assert!(reply.text.ends_with("\r\n"), "RFC 4180 lines end in CRLF");
}

/// The rows Python's `csv` module reads from `text`, as a JSON array of arrays.
fn parse_with_python_csv(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import csv, io, json, sys\n\
             data = sys.stdin.buffer.read().decode('utf-8')\n\
             print(json.dumps(list(csv.reader(io.StringIO(data, newline=''), strict=True))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh puts .venv first on PATH)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python csv failed: {output:?}");
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn every_invalid_parameter_gets_a_400_that_names_it() {
    let server = RestServer::start().await;
    let cases = [
        (
            "from=yesterday",
            "from=\"yesterday\" is not an RFC 3339 timestamp or a YYYY-MM-DD date",
        ),
        (
            "to=2026-02-30",
            "to=\"2026-02-30\" is not an RFC 3339 timestamp or a YYYY-MM-DD date",
        ),
        (
            "from=2026-11-02&to=2026-11-01",
            "from must be before to (the range is [from, to))",
        ),
        (
            "from=2026-11-01&to=2026-11-01",
            "from must be before to (the range is [from, to))",
        ),
        (
            "groupBy=week",
            "groupBy=\"week\" is not one of day, hour, model, key, user, subscription, costCenter, organizationId",
        ),
        ("groupBy=day,day", "groupBy names \"day\" twice"),
        ("format=xlsx", "format=\"xlsx\" is not json or csv"),
        ("limit=0", "limit=\"0\" is not a number from 1 to 10000"),
        (
            "limit=lots",
            "limit=\"lots\" is not a number from 1 to 10000",
        ),
        (
            "cursor=%25%25",
            "cursor is not one this report returned (it belongs to the same groupBy)",
        ),
        (
            "format=csv&cursor=abc",
            "cursor is only for format=json (CSV returns every row)",
        ),
        (
            "groupby=day",
            "unknown parameter \"groupby\" (known: from, to, groupBy, format, user, subscription, model, cursor, limit)",
        ),
        (
            "limit=1&limit=2",
            "parameter \"limit\" is given more than once",
        ),
    ];
    for (query, message) in cases {
        let reply = report(&server, ALICE, query).await;
        reply.assert_exactly(
            400,
            json!({"error": {"message": message, "type": "invalid_request_error",
                             "code": "invalid_parameter"}}),
        );
    }
    let anonymous = server.call(Method::GET, "/v1/usage/report").send().await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn nobody_reads_another_users_report_with_a_token_or_an_api_key() {
    let server = RestServer::start().await;
    seed(&server.test.db).await;
    let key = server.create_key(ALICE, json!({"name": "reporting"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();

    for credential in [ALICE, key.as_str()] {
        let denied = report(&server, credential, &format!("{RANGE}&user=bob")).await;
        denied.assert_exactly(
            403,
            json!({"error": {"message": "only an admin may see another user's usage",
                             "type": "permission_error", "code": "access_denied"}}),
        );
        let csv = report(&server, credential, &format!("{RANGE}&user=bob&format=csv")).await;
        assert_eq!(csv.status, 403);
        // Without `user`, a non-admin's report is theirs alone, whatever the grouping.
        let own = report(&server, credential, &format!("{RANGE}&groupBy=user")).await;
        assert_eq!(
            own.assert_status(200)["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["user"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["alice"]
        );
    }
    // An admin's cursor, replayed by alice, still pages through alice's rows only.
    let admin_page = report(&server, ADMIN, &format!("{RANGE}&groupBy=user&limit=1")).await;
    let cursor = admin_page.json["nextCursor"].as_str().unwrap().to_owned();
    let replayed = report(
        &server,
        ALICE,
        &format!("{RANGE}&groupBy=user&cursor={cursor}"),
    )
    .await;
    assert_eq!(replayed.assert_status(200)["data"], json!([]));
    assert_eq!(replayed.json["totals"]["requests"], 6);
}

#[tokio::test]
async fn sql_in_group_by_or_filters_is_refused_or_matched_as_text_and_huge_ranges_are_refused() {
    let server = RestServer::start().await;
    seed(&server.test.db).await;

    let injected = report(&server, ADMIN, "groupBy=day%3BDROP%20TABLE%20usage_ledger").await;
    let quoted = report(
        &server,
        ADMIN,
        &format!("{RANGE}&model=llm%2Fa'%20OR%20'1'%3D'1"),
    )
    .await;
    let huge = report(&server, ADMIN, "from=0001-01-01&to=9999-12-31").await;
    let just_over = report(&server, ADMIN, "from=2025-01-01&to=2026-02-06").await;
    let long = report(&server, ADMIN, &format!("model={}", "a".repeat(4096))).await;

    assert_eq!(injected.status, 400);
    assert_eq!(
        injected.json["error"]["message"],
        "groupBy=\"day;DROP TABLE usage_ledger\" is not one of day, hour, model, key, user, subscription, costCenter, organizationId"
    );
    assert_eq!(
        quoted.assert_status(200)["data"],
        json!([]),
        "a filter is a value, never SQL"
    );
    assert_eq!(huge.status, 400);
    assert_eq!(
        just_over.json["error"]["message"],
        "the range is longer than 400 days; ask for several shorter ranges"
    );
    assert_eq!(long.json["error"]["message"], "model is too long");
    let still_there = report(&server, ADMIN, RANGE).await;
    assert_eq!(still_there.assert_status(200)["totals"]["requests"], 13);
}

#[tokio::test]
async fn checks_through_the_ledger_show_up_in_the_report_with_the_keys_id() {
    let server = RestServer::start_with(|config| {
        config.ledger.usage_flush_interval = Duration::from_millis(50);
    })
    .await;
    let created = server.create_key(BOB, json!({"name": "live"})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    for _ in 0..3 {
        assert_eq!(server.check("simulator", key).await, None);
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let reply = report(&server, BOB, "groupBy=key,model,subscription").await;
        let data = reply.assert_status(200)["data"].clone();
        if data[0]["requests"] == 3 {
            break data[0].clone();
        }
        assert!(Instant::now() < deadline, "never booked: {data}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["key"], id);
    assert_eq!(row["model"], "models-as-a-service/simulator");
    assert_eq!(row["subscription"], "models-as-a-service/premium");
}
