//! Where this process sits in a distributed run: torchrun's environment (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), which `mtl-train --nproc N` sets for its ranks
//! too. Every mistake in it is one line naming the variable.
use crate::{user_bail, user_error};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// The rank on this machine: the GPU (`cuda:LOCAL_RANK`) a CUDA rank uses.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already hosts the store on `MASTER_PORT`
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`); otherwise rank 0 hosts it.
    pub agent_store: bool,
    /// torchrun's restart count: every attempt keeps its keys apart in the agent's store.
    pub attempt: u64,
}

/// The variables that make a process a rank.
pub const VARIABLES: &[&str] = &["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"];

impl Launch {
    /// This process's place from the environment; `None` when neither `RANK` nor `WORLD_SIZE`
    /// is set (a plain single-process run).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any source of variables.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let (rank, world) = match (get("RANK"), get("WORLD_SIZE")) {
            (None, None) => return Ok(None),
            (Some(r), Some(w)) => (number("RANK", &r)?, number("WORLD_SIZE", &w)?),
            (None, Some(_)) => user_bail!("WORLD_SIZE is set but RANK is not; {}", HOW),
            (Some(_), None) => user_bail!("RANK is set but WORLD_SIZE is not; {}", HOW),
        };
        if world == 0 {
            user_bail!("WORLD_SIZE: must be at least 1");
        }
        if rank >= world {
            user_bail!("RANK: {rank} is not below WORLD_SIZE {world}");
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(l) => number("LOCAL_RANK", &l)?,
            None => rank,
        };
        let Some(master_addr) = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) else {
            user_bail!("MASTER_ADDR is not set (the host of rank 0); {}", HOW)
        };
        let Some(port) = get("MASTER_PORT") else { user_bail!("MASTER_PORT is not set; {}", HOW) };
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => user_bail!("MASTER_PORT: '{port}' is not a port number (1-65535)"),
        };
        let attempt = get("TORCHELASTIC_RESTART_COUNT").and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        Ok(Some(Self {
            rank,
            world,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
            attempt,
        }))
    }

    /// Whether this process starts the store (rank 0, unless torchrun's agent runs one).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// The one line a failed rendezvous becomes, from the store's own message.
    pub fn rendezvous_error(&self, message: &str, timeout: Duration) -> anyhow::Error {
        let (addr, port) = (&self.master_addr, self.master_port);
        tracing::debug!("rendezvous failed: {message}");
        let lower = message.to_lowercase();
        if self.hosts_store() && (lower.contains("eaddrinuse") || lower.contains("address already in use")) {
            return user_error!(
                "MASTER_PORT: port {port} is already in use on this machine; choose a free one (MASTER_PORT, or \
                 --master-port with --nproc)"
            );
        }
        let secs = timeout.as_secs_f64();
        if lower.contains("ping failed") {
            return user_error!(
                "MASTER_ADDR {addr}, MASTER_PORT {port}: something else answers there, not a rendezvous store; check both"
            );
        }
        if lower.contains("trying to connect") {
            if self.hosts_store() {
                return user_error!(
                    "MASTER_ADDR {addr}: rank 0 cannot reach its own store there (port {port}) within {secs:.0} s; set it \
                     to this machine's name or address"
                );
            }
            return user_error!(
                "MASTER_ADDR {addr}, MASTER_PORT {port}: cannot reach rank 0's store within {secs:.0} s \
                 (train.dist_timeout_seconds); check that rank 0 is running, MASTER_ADDR names its machine and the port \
                 is open"
            );
        }
        if lower.contains("timed out") || lower.contains("timeout") {
            return user_error!(
                "rendezvous at {addr}:{port}: waited {secs:.0} s for all {} ranks to join (train.dist_timeout_seconds); \
                 check that every rank is started with WORLD_SIZE {} and the same MASTER_ADDR and MASTER_PORT",
                self.world,
                self.world
            );
        }
        user_error!("rendezvous at MASTER_ADDR {addr}, MASTER_PORT {port}: {}", first_line(message))
    }
}

const HOW: &str = "start every rank with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun sets them), or \
                   use mtl-train CONFIG --nproc N";

fn number(name: &str, value: &str) -> anyhow::Result<usize> {
    value.trim().parse().map_err(|_| user_error!("{name}: '{value}' is not a non-negative integer"))
}

/// The first line of a c10d message, without its source-location suffix.
pub(super) fn first_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or(message).trim();
    line.split(" Exception raised from").next().unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::one_line_user_error;

    fn launch(vars: &[(&str, &str)]) -> anyhow::Result<Option<Launch>> {
        Launch::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn torchrun_variables_make_a_rank() {
        assert_eq!(launch(&[]).unwrap(), None);
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.master_port, l.attempt), (3, 8, 1, 29500, 2));
        assert!(l.agent_store && !l.hosts_store());
        let solo = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        let solo = solo.unwrap().unwrap();
        assert_eq!(solo.local_rank, 0);
        assert!(solo.hosts_store());
    }

    #[test]
    fn a_bad_environment_is_one_line_naming_the_variable() {
        let base = [("MASTER_ADDR", "h"), ("MASTER_PORT", "29500")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WORLD_SIZE", "2")], "RANK is not"),
            (&[("RANK", "0")], "WORLD_SIZE is not"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK: 'x'"),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "RANK: 2 is not below WORLD_SIZE 2"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE: must be"),
            (&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "-1")], "LOCAL_RANK"),
        ];
        for (vars, want) in cases {
            let all: Vec<(&str, &str)> = vars.iter().chain(&base).copied().collect();
            let msg = one_line_user_error(launch(&all).unwrap_err());
            assert!(msg.contains(want), "{vars:?}: {msg}");
        }
        let msg = one_line_user_error(launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err());
        assert!(msg.contains("MASTER_ADDR is not set"), "{msg}");
        let bad_port = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")];
        let msg = one_line_user_error(launch(&bad_port).unwrap_err());
        assert!(msg.contains("MASTER_PORT: '70000'"), "{msg}");
    }
}
