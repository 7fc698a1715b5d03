//! The environment a child process gets: an allow-list of the caller's variables, so a
//! health check, a `check_command`/`reload_command` or a managed HAProxy never inherits
//! AWS credentials (`AWS_*`), an etcd password or anything else the daemon was given.
//!
//! Kept: `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `TERM`, `TZ`, `TMPDIR`, `HOSTNAME`,
//! `LANG`, `LANGUAGE` and `LC_*`. A command that needs more sets it itself (e.g.
//! `"reload_command": "FOO=bar /usr/local/bin/reload"`).

use std::ffi::OsString;

/// The variables children keep, besides `LC_*`.
pub const KEPT: [&str; 11] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR", "HOSTNAME", "LANG",
    "LANGUAGE",
];

/// Whether a child keeps variable `name`.
pub fn is_kept(name: &str) -> bool {
    KEPT.contains(&name) || name.starts_with("LC_")
}

/// The allowed subset of this process's environment.
pub fn allowed() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(is_kept))
        .collect()
}

/// Replaces `cmd`'s environment with [`allowed`].
pub fn restrict(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    cmd.env_clear().envs(allowed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_kept() {
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SESSION_TOKEN",
            "ETCD_PASSWORD",
            "ETCDCTL_PASSWORD",
            "SYNAPSE_CONFIG",
            "LD_PRELOAD",
        ] {
            assert!(!is_kept(name), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ"] {
            assert!(is_kept(name), "{name}");
        }
    }
}
