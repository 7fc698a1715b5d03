//! One health check: the keys each type takes, and validation into a [`CheckKind`].

use std::num::NonZeroU32;
use std::time::Duration;

use common::config::{join_path, ConfigErrors};
use common::Host;

use super::file::{missing, positive, CheckFile, CommandFile};
use super::{
    CheckConfig, CheckKind, ExecCheckConfig, HttpCheckConfig, RabbitmqCheckConfig, TcpCheckConfig,
    DEFAULT_CHECK_TIMEOUT, DEFAULT_OPEN_TIMEOUT,
};

const COMMON_CHECK_KEYS: &[&str] = &["type", "name", "host", "port", "timeout", "rise", "fall"];
const HTTP_CHECK_KEYS: &[&str] = &[
    "uri",
    "ssl",
    "ssl_verify",
    "ssl_ca_file",
    "open_timeout",
    "read_timeout",
    "ssl_timeout",
    "headers",
    "expect",
];
const EXEC_CHECK_KEYS: &[&str] = &["command", "shell"];
const RABBITMQ_CHECK_KEYS: &[&str] = &["username", "password", "vhost"];

pub(super) fn validate_check(
    file: &CheckFile,
    path: &str,
    service_host: &str,
    service_port: u16,
    errors: &mut ConfigErrors,
) -> Option<CheckConfig> {
    let at = |key: &str| join_path(path, key);
    let before = errors.len();
    let kind = match file.kind.as_deref() {
        Some(k @ ("http" | "tcp" | "redis" | "rabbitmq" | "exec" | "noop")) => k,
        Some(_) => {
            errors.push(
                at("type"),
                "must be one of http, tcp, redis, rabbitmq, exec, noop",
            );
            return None;
        }
        None => {
            missing(errors, at("type"));
            return None;
        }
    };
    // Keys of other check types are mistakes, not options.
    let present: [(&str, bool); 14] = [
        ("uri", file.uri.is_some()),
        ("ssl", file.ssl.is_some()),
        ("ssl_verify", file.ssl_verify.is_some()),
        ("ssl_ca_file", file.ssl_ca_file.is_some()),
        ("open_timeout", file.open_timeout.is_some()),
        ("read_timeout", file.read_timeout.is_some()),
        ("ssl_timeout", file.ssl_timeout.is_some()),
        ("headers", file.headers.is_some()),
        ("expect", file.expect.is_some()),
        ("command", file.command.is_some()),
        ("shell", file.shell.is_some()),
        ("username", file.username.is_some()),
        ("password", file.password.is_some()),
        ("vhost", file.vhost.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "http" => HTTP_CHECK_KEYS,
        "exec" => EXEC_CHECK_KEYS,
        "rabbitmq" => RABBITMQ_CHECK_KEYS,
        _ => &[],
    };
    for (key, is_set) in present {
        if is_set && !allowed.contains(&key) && !COMMON_CHECK_KEYS.contains(&key) {
            errors.push(at(key), format_args!("is not a key of {kind} checks"));
        }
    }

    let threshold = |value: Option<u32>, key: &str, errors: &mut ConfigErrors| match value {
        None => NonZeroU32::MIN,
        Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
            errors.push(at(key), "must be at least 1");
            NonZeroU32::MIN
        }),
    };
    let rise = threshold(file.rise, "rise", errors);
    let fall = threshold(file.fall, "fall", errors);
    let timeout = positive(file.timeout, &at("timeout"), DEFAULT_CHECK_TIMEOUT, errors);
    let host = file.host.clone().unwrap_or_else(|| service_host.to_owned());
    let port = file.port.map_or(service_port, |p| p.0);
    if file.host.is_some() && Host::parse(&host).is_err() {
        errors.push(at("host"), "must be an IP address or a DNS name");
    }

    let check = match kind {
        "http" => validate_http(file, path, &host, port, timeout, errors).map(CheckKind::Http),
        "tcp" => Some(CheckKind::Tcp(TcpCheckConfig {
            host: host.clone(),
            port,
            timeout,
        })),
        "redis" => Some(CheckKind::Redis(TcpCheckConfig {
            host: host.clone(),
            port,
            timeout,
        })),
        // upstream's defaults: guest/guest on the default vhost.
        "rabbitmq" => Some(CheckKind::Rabbitmq(RabbitmqCheckConfig {
            address: TcpCheckConfig {
                host: host.clone(),
                port,
                timeout,
            },
            username: file.username.clone().unwrap_or_else(|| "guest".to_owned()),
            password: file
                .password
                .clone()
                .unwrap_or_else(|| common::Secret::new("guest")),
            vhost: file.vhost.clone().unwrap_or_else(|| "/".to_owned()),
        })),
        "exec" => validate_exec(file, path, timeout, errors).map(CheckKind::Exec),
        _ => Some(CheckKind::Noop),
    };
    let check = check?;
    let name = file.name.clone().unwrap_or_else(|| match &check {
        CheckKind::Http(h) => format!("http {}", h.url),
        CheckKind::Tcp(t) => format!("tcp {}", host_port(&t.host, t.port)),
        CheckKind::Redis(t) => format!("redis {}", host_port(&t.host, t.port)),
        CheckKind::Rabbitmq(r) => {
            format!("rabbitmq {}", host_port(&r.address.host, r.address.port))
        }
        CheckKind::Exec(e) => format!("exec {}", e.argv.first().map_or("", String::as_str)),
        CheckKind::Noop => "noop".to_owned(),
    });
    (errors.len() == before).then_some(CheckConfig {
        name,
        rise,
        fall,
        kind: check,
    })
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn validate_http(
    file: &CheckFile,
    path: &str,
    host: &str,
    port: u16,
    timeout: Duration,
    errors: &mut ConfigErrors,
) -> Option<HttpCheckConfig> {
    let at = |key: &str| join_path(path, key);
    let uri = match &file.uri {
        Some(uri) if uri.starts_with('/') && !uri.bytes().any(|b| b <= b' ' || b == 0x7f) => {
            Some(uri.clone())
        }
        Some(_) => {
            errors.push(
                at("uri"),
                "must be a path starting with '/', without spaces or control characters",
            );
            None
        }
        None => {
            missing(errors, at("uri"));
            None
        }
    };
    let ssl = file.ssl.unwrap_or(false);
    if !ssl {
        for (key, set) in [
            ("ssl_verify", file.ssl_verify.is_some()),
            ("ssl_ca_file", file.ssl_ca_file.is_some()),
            ("ssl_timeout", file.ssl_timeout.is_some()),
        ] {
            if set {
                errors.push(at(key), "needs \"ssl\": true");
            }
        }
    }
    if let Some(ca) = &file.ssl_ca_file {
        if file.ssl_verify == Some(false) {
            errors.push(at("ssl_ca_file"), "is unused with \"ssl_verify\": false");
        }
        match std::fs::read(ca) {
            Ok(pem) if reqwest::Certificate::from_pem(&pem).is_ok() => {}
            Ok(_) => errors.push(
                at("ssl_ca_file"),
                format_args!("{} holds no PEM certificate", ca.display()),
            ),
            Err(e) => errors.push(
                at("ssl_ca_file"),
                format_args!("cannot read {}: {e}", ca.display()),
            ),
        }
    }
    let open = positive(
        file.open_timeout,
        &at("open_timeout"),
        DEFAULT_OPEN_TIMEOUT,
        errors,
    );
    let read = positive(file.read_timeout, &at("read_timeout"), timeout, errors);
    let ssl_timeout = if ssl {
        positive(
            file.ssl_timeout,
            &at("ssl_timeout"),
            DEFAULT_OPEN_TIMEOUT,
            errors,
        )
    } else {
        Duration::ZERO
    };
    let mut headers = Vec::new();
    for (name, value) in file.headers.iter().flatten() {
        let key = at(&format!("headers.{name}"));
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(key, "is not a valid HTTP header name");
        } else if reqwest::header::HeaderValue::from_str(value).is_err() {
            errors.push(key, "value must be visible ASCII text without line breaks");
        } else {
            headers.push((name.clone(), value.clone()));
        }
    }
    if file.expect.as_deref() == Some("") {
        errors.push(at("expect"), "must not be empty");
    }
    if port == 0 {
        // Reported at the service's `port`.
        return None;
    }
    let scheme = if ssl { "https" } else { "http" };
    let uri = uri?;
    let url = format!("{scheme}://{}{uri}", host_port(host, port));
    if reqwest::Url::parse(&url).is_err() {
        errors.push(at("uri"), "does not make a valid URL with the check's host");
        return None;
    }
    Some(HttpCheckConfig {
        url,
        ssl_verify: file.ssl_verify.unwrap_or(file.ssl_ca_file.is_some()),
        ssl_ca_file: file.ssl_ca_file.clone(),
        connect_timeout: open + ssl_timeout,
        read_timeout: read,
        total_timeout: open + ssl_timeout + read,
        headers,
        expect: file.expect.clone().filter(|e| !e.is_empty()),
    })
}

fn validate_exec(
    file: &CheckFile,
    path: &str,
    timeout: Duration,
    errors: &mut ConfigErrors,
) -> Option<ExecCheckConfig> {
    let at = |key: &str| join_path(path, key);
    let shell = file.shell.unwrap_or(false);
    let argv = match (&file.command, shell) {
        (None, _) => {
            missing(errors, at("command"));
            return None;
        }
        (Some(CommandFile::Line(line)), true) if !line.trim().is_empty() => {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()]
        }
        (Some(CommandFile::Line(_)), false) => {
            errors.push(
                at("command"),
                "a command string runs only with \"shell\": true; give an array \
                 [program, args...] to run it without a shell",
            );
            return None;
        }
        (Some(CommandFile::Argv(_)), true) => {
            errors.push(
                at("command"),
                "with \"shell\": true, give the command as one string",
            );
            return None;
        }
        (Some(CommandFile::Argv(argv)), false) if argv.first().is_some_and(|p| !p.is_empty()) => {
            argv.clone()
        }
        (Some(_), _) => {
            errors.push(at("command"), "must not be empty");
            return None;
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        errors.push(at("command"), "must not contain NUL characters");
        return None;
    }
    Some(ExecCheckConfig { argv, timeout })
}
