//! The HTTP client behind `topicfusion sql --url`: logs in once, then sends statements to
//! `/v1/api/sql` and returns their results as JSON columns and rows.

use serde::Deserialize;

/// One statement's result, as the server sent it.
#[derive(Debug, Deserialize)]
pub struct RemoteResult {
    pub columns: Vec<RemoteColumn>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RemoteColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

#[derive(Deserialize)]
struct SqlResponse {
    results: Vec<RemoteResult>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct LoginResponse {
    access_token: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Logs in to the server at `url` (e.g. `http://127.0.0.1:8080`).
    pub async fn connect(url: &str, user: &str, password: &str) -> Result<Self, String> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!("invalid --url {url}: expected http://HOST:PORT"));
        }
        let http = reqwest::Client::builder().build().map_err(|e| format!("cannot create an HTTP client: {e}"))?;
        let response = http
            .post(format!("{base}/v1/api/auth/login"))
            .json(&serde_json::json!({ "username": user, "password": password }))
            .send()
            .await
            .map_err(|e| format!("cannot reach {base}: {e}"))?;
        let login: LoginResponse = decode(response).await?;
        Ok(Self { http, base, token: login.access_token })
    }

    /// Runs SQL text (one or more statements) and returns every statement's result.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RemoteResult>, String> {
        let response = self
            .http
            .post(format!("{}/v1/api/sql", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.base))?;
        Ok(decode::<SqlResponse>(response).await?.results)
    }
}

/// The body of a successful response, or the server's error message.
async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, String> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("cannot read the response: {e}"))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| format!("unexpected response from the server: {e}"));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => Err(format!("{} ({})", b.error.message, b.error.code)),
        Err(_) => Err(format!("server answered {status}")),
    }
}
