//! The calls between monitors: `POST {url}/v1/raft/{append,vote,snapshot}` with the Raft
//! message as JSON, answered with `{"Ok": …}` or `{"Err": …}`. With the cluster secret
//! each call is signed and an answer counts only if the monitor that answered signed it,
//! as every member's call does (docs/security.md). A call the fault filter blocks fails
//! as an unreachable peer would (`keel chaos partition`).

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use keel_auth::Signer;
use keel_core::faults::Faults;

use super::{MonitorNum, TypeConfig};

/// Makes a connection per peer; clones share the HTTP client.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    signer: Option<Signer>,
    faults: Faults,
}

impl Network {
    /// Calls through `client`, signing with `signer`.
    pub fn new(client: reqwest::Client, signer: Option<Signer>, faults: Faults) -> Self {
        Self {
            client,
            signer,
            faults,
        }
    }
}

/// A peer.
pub struct Connection {
    net: Network,
    target: MonitorNum,
    url: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallError(String);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: MonitorNum, node: &BasicNode) -> Self::Network {
        Connection {
            net: self.clone(),
            target,
            url: node.addr.trim_end_matches('/').to_owned(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<MonitorNum, BasicNode, RaftError<MonitorNum, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}/v1/raft/{path}", self.url);
        let unreachable = |why: String| RPCError::Unreachable(Unreachable::new(&CallError(why)));
        let network = |why: String| RPCError::Network(NetworkError::new(&CallError(why)));
        if self.net.faults.blocks(&url) {
            return Err(unreachable(format!(
                "{url}: connection refused by keel's fault filter (keel chaos partition)"
            )));
        }
        let body = serde_json::to_vec(req).map_err(|e| network(e.to_string()))?;
        let signed = match &self.net.signer {
            Some(s) => Some(
                s.sign("POST", &url, &body)
                    .map_err(|e| network(e.to_string()))?,
            ),
            None => None,
        };
        let mut request = self
            .net
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(option.hard_ttl());
        if let Some(signed) = &signed {
            request = request.header(keel_auth::AUTH_HEADER, &signed.header);
        }
        let resp = request.body(body).send().await.map_err(|e| {
            if e.is_connect() {
                unreachable(format!("{url}: {e}"))
            } else {
                network(format!("{url}: {e}"))
            }
        })?;
        let status = resp.status();
        let answer_sig = keel_auth::signature_of(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| network(format!("{url}: {e}")))?;
        if let (Some(signer), Some(signed)) = (&self.net.signer, &signed) {
            signer
                .check_answer(signed, answer_sig.as_deref(), status.as_u16(), Some(&bytes))
                .map_err(|e| network(format!("{url}: the answer is not from a member: {e}")))?;
        }
        if !status.is_success() {
            return Err(network(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        let answer: Result<Resp, RaftError<MonitorNum, E>> = serde_json::from_slice(&bytes)
            .map_err(|e| network(format!("{url}: bad answer: {e}")))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<MonitorNum>,
        RPCError<MonitorNum, BasicNode, RaftError<MonitorNum>>,
    > {
        self.call("append", &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<MonitorNum>,
        RPCError<MonitorNum, BasicNode, RaftError<MonitorNum, InstallSnapshotError>>,
    > {
        self.call("snapshot", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<MonitorNum>,
        option: RPCOption,
    ) -> Result<VoteResponse<MonitorNum>, RPCError<MonitorNum, BasicNode, RaftError<MonitorNum>>>
    {
        self.call("vote", &req, &option).await
    }
}
