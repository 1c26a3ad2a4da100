//! The two product documents (`shared/seeds/`), replayed: their shell and curl lines run verbatim
//! through bash against the real stack (Envoy → maas-authz → simulator). Only what a cluster
//! provides is stood in for: `oc whoami -t` prints a static token, and `MAAS_API_URL` is the
//! local gateway instead of `https://maas.${CLUSTER_DOMAIN}`.

use std::process::Command;

use crate::e2e::{Gateway, PREMIUM_TOKEN};

/// Runs `script` in bash with the seed's environment; returns stdout, failing on a non-zero exit.
fn run_seed_script(gateway: &Gateway, script: &str) -> String {
    let prelude = format!(
        "set -euo pipefail\n\
         oc() {{ if [ \"$*\" = 'whoami -t' ]; then echo '{PREMIUM_TOKEN}'; else echo \"oc $* is not available in tests\" >&2; return 1; fi; }}\n\
         MAAS_API_URL='{url}'\n\
         OC_TOKEN=$(oc whoami -t)\n",
        url = gateway.url
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("bash, curl and jq are installed by scripts/test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "seed script failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The first non-empty line of `text`, trimmed.
fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Seed 000 (self-service model access): token, model discovery, chat, streaming, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_self_service_model_access_works_as_written() {
    let gateway = Gateway::start().await;
    let script = r#"
TOKEN_RESPONSE=$(curl -sSk \
-H "Authorization: Bearer ${OC_TOKEN}" \
-H "Content-Type: application/json" \
-X POST \
-d '{"expiration": "15m"}' \
"${MAAS_API_URL}/maas-api/v1/tokens")
ACCESS_TOKEN=$(echo $TOKEN_RESPONSE | jq -r .token)
echo $ACCESS_TOKEN
MODELS=$(curl "${MAAS_API_URL}/v1/models" \
-H "Content-Type: application/json" \
-H "Authorization: Bearer ${ACCESS_TOKEN}")
echo $MODELS | jq .
MODEL_ID="simulator"
MODEL_INFO=$(curl "${MAAS_API_URL}/v1/models" \
-H "Authorization: Bearer ${ACCESS_TOKEN}" | \
jq --arg model "$MODEL_ID" '.data[] | select(.id == $model)')
echo $MODEL_INFO | jq .
# First, get the model URL from the models endpoint
MODELS=$(curl "${MAAS_API_URL}/v1/models" \
-H "Content-Type: application/json" \
-H "Authorization: Bearer ${ACCESS_TOKEN}")
MODEL_URL=$(echo $MODELS | jq -r '.data[0].url')
MODEL_NAME=$(echo $MODELS | jq -r '.data[0].id')
echo "CHAT:"
curl -sSk \
-H "Authorization: Bearer ${ACCESS_TOKEN}" \
-H "Content-Type: application/json" \
-d "{
\"model\": \"${MODEL_NAME}\",
\"messages\": [
{
\"role\": \"user\",
\"content\": \"Hello, how are you?\"
}
],
\"max_tokens\": 100
}" \
"${MODEL_URL}/v1/chat/completions"
echo
echo "STREAM:"
curl -sSk --no-buffer \
-H "Authorization: Bearer ${ACCESS_TOKEN}" \
-H "Content-Type: application/json" \
-d "{
\"model\": \"${MODEL_NAME}\",
\"messages\": [
{
\"role\": \"user\",
\"content\": \"Hello, how are you?\"
}
],
\"max_tokens\": 100,
\"stream\": true
}" \
"${MODEL_URL}/v1/chat/completions"
echo "WRONG FORMAT:"
curl -sS -H "Authorization: ${ACCESS_TOKEN}" -H "Content-Type: application/json" \
-d '{"model": "simulator", "messages": [{"role": "user", "content": "test"}]}' \
"${MODEL_URL}/v1/chat/completions"
echo
echo "MONITOR:"
# Make a request and check headers
curl -D - -o /dev/null -sSk \
-H "Authorization: Bearer ${ACCESS_TOKEN}" \
-H "Content-Type: application/json" \
-d '{"model": "simulator", "messages": [{"role": "user", "content": "test"}]}' \
"${MODEL_URL}/v1/chat/completions" | grep -i "x-ratelimit"
"#;

    let out = run_seed_script(&gateway, script);

    let token = out.lines().next().unwrap_or_default();
    assert!(
        token.starts_with("sk-oai-"),
        "the access token is an sk-oai key:\n{out}"
    );
    assert!(
        out.contains("\"id\": \"simulator\"") && out.contains("\"id\": \"qwen3\""),
        "{out}"
    );
    let (_, after_chat) = out.split_once("CHAT:").unwrap();
    let chat_line = first_line(after_chat);
    let chat: serde_json::Value = serde_json::from_str(chat_line).expect("chat answer is JSON");
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert!(chat["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let (_, after_stream) = out.split_once("STREAM:").unwrap();
    assert!(
        after_stream.contains("data: ") && after_stream.contains("data: [DONE]"),
        "{after_stream}"
    );
    let (wrong_format, monitor) = out
        .split_once("WRONG FORMAT:")
        .unwrap()
        .1
        .split_once("MONITOR:")
        .unwrap();
    let denial: serde_json::Value =
        serde_json::from_str(wrong_format.trim()).expect("401 body is JSON");
    assert_eq!(denial["error"]["type"], "invalid_request_error");
    assert_eq!(denial["error"]["code"], "invalid_api_key");
    // "Monitoring Usage": the premium tier's limits, this being its third counted request
    // (the 401 is not counted). The seed writes `curl -I` with `-d`, which curl refuses ("You
    // can only select one HTTP request method!"); `-D - -o /dev/null` prints the headers of the
    // POST the seed means.
    let monitor = monitor.to_ascii_lowercase();
    for name in [
        "x-ratelimit-limit-requests: 20",
        "x-ratelimit-remaining-requests: ",
        "x-ratelimit-reset-requests: ",
        "x-ratelimit-limit-tokens: 50000",
        "x-ratelimit-remaining-tokens: ",
        "x-ratelimit-reset-tokens: ",
    ] {
        assert!(monitor.contains(name), "{name} missing from:\n{monitor}");
    }
    let remaining: u64 = monitor
        .lines()
        .find_map(|l| l.trim().strip_prefix("x-ratelimit-remaining-requests: "))
        .and_then(|v| v.parse().ok())
        .expect("remaining requests");
    // 17 unless a minute boundary passed between the three requests (the wall clock runs here).
    assert!((17..20).contains(&remaining), "{monitor}");
}

/// Seed 003 (API key management): create, use, search, get, revoke, bulk revoke, ephemeral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_api_key_management_works_as_written_and_revocation_stops_inference() {
    let gateway = Gateway::start().await;
    let script = r#"
API_KEY_RESPONSE=$(curl -sSk \
-H "Authorization: Bearer ${OC_TOKEN}" \
-H "Content-Type: application/json" \
-X POST \
-d '{"name": "my-api-key", "description": "Key for model access", "expiresIn": "90d"}' \
"${MAAS_API_URL}/maas-api/v1/api-keys")
API_KEY=$(echo $API_KEY_RESPONSE | jq -r .key)
echo "API Key: ${API_KEY}"
KEY_ID=$(echo $API_KEY_RESPONSE | jq -r .id)
echo "USE BEFORE: $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${API_KEY}" \
  -H "Content-Type: application/json" -d '{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}' \
  "${MAAS_API_URL}/qwen3/v1/chat/completions")"
echo "SEARCH:"
curl -sSk -X POST "${MAAS_API_URL}/maas-api/v1/api-keys/search" \
-H "Authorization: Bearer $(oc whoami -t)" \
-H "Content-Type: application/json" \
-d '{
"status": "active",
"limit": 10,
"offset": 0
}' | jq -c .
echo "GET:"
curl -sSk "${MAAS_API_URL}/maas-api/v1/api-keys/${KEY_ID}" \
-H "Authorization: Bearer $(oc whoami -t)" | jq -c .
echo "REVOKE:"
curl -sSk -X DELETE "${MAAS_API_URL}/maas-api/v1/api-keys/${KEY_ID}" \
-H "Authorization: Bearer $(oc whoami -t)"
echo
echo "USE AFTER: $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${API_KEY}" \
  -H "Content-Type: application/json" -d '{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}' \
  "${MAAS_API_URL}/qwen3/v1/chat/completions")"
echo "EPHEMERAL:"
curl -sSk -X POST "${MAAS_API_URL}/maas-api/v1/api-keys" \
-H "Authorization: Bearer $(oc whoami -t)" \
-H "Content-Type: application/json" \
-d '{"ephemeral": true, "expiresIn": "30m"}' | jq -c .
echo "BULK:"
curl -sSk -X POST "${MAAS_API_URL}/maas-api/v1/api-keys/bulk-revoke" \
-H "Authorization: Bearer $(oc whoami -t)" \
-H "Content-Type: application/json" | jq -c .
"#;

    let out = run_seed_script(&gateway, script);

    let section = |name: &str| -> String {
        let (_, rest) = out
            .split_once(&format!("{name}:"))
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
        first_line(rest).to_owned()
    };
    assert!(section("API Key").starts_with("sk-oai-"), "{out}");
    assert_eq!(section("USE BEFORE"), "200");
    let search: serde_json::Value = serde_json::from_str(&section("SEARCH")).unwrap();
    assert_eq!(search["object"], "list");
    assert_eq!(search["data"][0]["name"], "my-api-key");
    assert_eq!(search["data"][0]["status"], "active");
    let got: serde_json::Value = serde_json::from_str(&section("GET")).unwrap();
    for field in [
        "id",
        "name",
        "description",
        "status",
        "subscription",
        "createdAt",
        "expiresAt",
    ] {
        assert!(got.get(field).is_some(), "GET lacks {field}: {got}");
    }
    assert_eq!(got["subscription"], "premium");
    let revoked: serde_json::Value = serde_json::from_str(&section("REVOKE")).unwrap();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(
        section("USE AFTER"),
        "401",
        "a revoked key must be refused at once"
    );
    let ephemeral: serde_json::Value = serde_json::from_str(&section("EPHEMERAL")).unwrap();
    assert_eq!(ephemeral["ephemeral"], true);
    assert!(
        ephemeral["name"]
            .as_str()
            .unwrap()
            .starts_with("ephemeral-")
    );
    let bulk: serde_json::Value = serde_json::from_str(&section("BULK")).unwrap();
    assert_eq!(
        bulk["revokedCount"], 1,
        "the ephemeral key was the last active one: {bulk}"
    );
}
