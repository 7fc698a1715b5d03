//! The registration value's unit tests and property tests: the wire format, validation
//! and the server options.

use super::*;
use proptest::prelude::*;

fn decode(s: &str) -> Result<Registration, RegistrationError> {
    Registration::decode(s.as_bytes())
}

fn reason(s: &str) -> &'static str {
    decode(s).expect_err(s).reason()
}

const GOLDEN_FULL: &str = r#"{"host":"10.0.0.5","port":8080,"name":"web-01","weight":3,"haproxy_server_options":"backup maxconn 100","labels":{"az":"us-east-1a"}}"#;
const GOLDEN_MIN: &str = r#"{"host":"10.0.0.5","port":8080,"name":"web-01"}"#;

#[test]
fn parse_errors_never_echo_the_value() {
    for hostile in [
        r#""hunter2-secret""#,
        r#"["hunter2-secret"]"#,
        "1234567890123",
        "true",
        r#"{"host": "10.0.0.5", "host": "hunter2-secret"}"#,
        r#"{"host": "hunter2-secret"#,
        r#"{"hunter2-secret" 1}"#,
        r#"{"host":"10.0.0.5","port":1,"name":"a"} hunter2-secret"#,
    ] {
        let err = decode(hostile).expect_err(hostile);
        assert_eq!(err.reason(), "parse_error", "{hostile}");
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("1234567890123"),
            "{hostile} echoed: {text}"
        );
    }
}

#[test]
fn golden_values_decode_and_reencode_byte_for_byte() {
    for golden in [GOLDEN_FULL, GOLDEN_MIN] {
        let reg = decode(golden).unwrap();
        assert_eq!(reg.encode(), golden);
    }
    let reg = decode(GOLDEN_FULL).unwrap();
    assert_eq!(reg.host, Host::Ip("10.0.0.5".parse().unwrap()));
    assert_eq!(reg.port.get(), 8080);
    assert_eq!(reg.name.as_str(), "web-01");
    assert_eq!(reg.weight, Weight::new(3));
    assert!(reg.haproxy_server_options.as_ref().unwrap().is_backup());
    assert_eq!(reg.labels["az"], "us-east-1a");
    assert_eq!(reg.server_name(), "web-01_10.0.0.5:8080");
}

#[test]
fn accepts_what_airbnb_nerve_writes() {
    // nerve's ZK reporter output, with fields in its order and a null weight.
    let reg =
        decode(r#"{"host":"10.1.2.3","port":3000,"name":"i-0abc","weight":null,"labels":{}}"#)
            .unwrap();
    assert_eq!(
        reg.encode(),
        r#"{"host":"10.1.2.3","port":3000,"name":"i-0abc"}"#
    );
    // Whitespace and unknown fields are fine (B14): unknown content is dropped.
    let reg =
        decode("{ \"host\": \"::1\", \"port\": 1, \"name\": \"a\", \"evil\": \"\\nprogram x\" }")
            .unwrap();
    assert_eq!(reg.encode(), r#"{"host":"::1","port":1,"name":"a"}"#);
}

// The B-cases of reliability.md §4.3 that concern one value.
#[test]
fn b01_b02_newlines_in_host() {
    assert_eq!(
        reason(r#"{"host":"10.0.0.1\n    server evil 6.6.6.6:80","port":80,"name":"a"}"#),
        "invalid_host"
    );
    assert_eq!(
        reason(r#"{"host":"10.0.0.1\r\nprogram x\n command /bin/sh -c id","port":80,"name":"a"}"#),
        "invalid_host"
    );
}

#[test]
fn b03_b04_b05_bad_names() {
    for name in [
        r#"web#1"#,
        "web 1",
        "a;b",
        r#"a\"b"#,
        r#"a\\b"#,
        "${HOME}",
        "$HAPROXY_CLI",
        ".if",
        ".if 1",
        " x",
        "",
    ] {
        let v = format!(r#"{{"host":"10.0.0.1","port":80,"name":"{name}"}}"#);
        assert_eq!(reason(&v), "invalid_name", "{v}");
    }
    // Charset-valid words are fine as names; they only appear inside server names.
    for name in ["lua-load", "program"] {
        let v = format!(r#"{{"host":"10.0.0.1","port":80,"name":"{name}"}}"#);
        assert_eq!(
            decode(&v).unwrap().server_name(),
            format!("{name}_10.0.0.1:80")
        );
    }
}

#[test]
fn b06_free_text_options_rejected() {
    for opts in [
        "backup\\n",
        "check port 22",
        "track b/s",
        "ssl verify none",
        "weight",
        "weight 999",
        // Outside HAProxy's ranges: refused by `haproxy -c` or `add server`.
        "inter 0",
        "inter 0ms",
        "inter 0s",
        "rise 0",
        "fall 0",
        "rise 1001",
        "maxconn 2147483648",
        "maxconn -1",
        "inter 25h",
        "slowstart 86400001",
        "inter 1us",
    ] {
        let v = format!(
            r#"{{"host":"10.0.0.1","port":80,"name":"a","haproxy_server_options":"{opts}"}}"#
        );
        assert_eq!(reason(&v), "invalid_option", "{v}");
    }
    let ok = ServerOptions::parse(
        "backup  check weight 5 maxconn 10 inter 2s rise 2 fall 3 slowstart 1m",
    )
    .unwrap();
    assert_eq!(
        ok.to_string(),
        "backup check weight 5 maxconn 10 inter 2000ms rise 2 fall 3 slowstart 60000ms"
    );
}

#[test]
fn b07_b08_host_policy() {
    let strict = AddressPolicy::default();
    let host = |s: &str| Host::parse(s).unwrap();
    assert!(matches!(
        strict.check(&host("example.com")),
        Err(RegistrationError::InvalidHost(_))
    ));
    let lenient = AddressPolicy {
        allow_hostnames: true,
        ..strict
    };
    assert_eq!(lenient.check(&host("Example.COM.")), Ok(()));
    assert_eq!(host("Example.COM."), Host::Dns("example.com".into()));
    for bad in [
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "fe80::1",
        "::",
        "255.255.255.255",
        "::ffff:169.254.169.254",
    ] {
        let err = strict.check(&host(bad)).unwrap_err();
        assert_eq!(err.reason(), "disallowed_address", "{bad}");
    }
    let no_loopback = AddressPolicy {
        allow_loopback: false,
        ..strict
    };
    assert_eq!(
        no_loopback.check(&host("127.0.0.1")).unwrap_err().reason(),
        "disallowed_address"
    );
    assert_eq!(strict.check(&host("127.0.0.1")), Ok(()));
    assert_eq!(strict.check(&host("10.1.2.3")), Ok(()));
    assert_eq!(strict.check(&host("2001:db8::1")), Ok(()));
    for bad in ["999.1.1.1", "1.2.3", "a..b", "-a.com", "a_b.com", "a b"] {
        assert_eq!(
            Host::parse(bad).unwrap_err().reason(),
            "invalid_host",
            "{bad}"
        );
    }
}

#[test]
fn b09_bad_ports() {
    for port in ["0", "65536", "-1", "\"80\"", "80.5", "1e3", "true"] {
        let v = format!(r#"{{"host":"10.0.0.1","port":{port},"name":"a"}}"#);
        assert_eq!(reason(&v), "invalid_port", "{v}");
    }
    assert_eq!(
        decode(r#"{"host":"10.0.0.1","port":null,"name":"a"}"#),
        Err(RegistrationError::MissingField { field: "port" })
    );
}

#[test]
fn b10_bad_weights() {
    for weight in ["257", "-1", "1.5", "\"1\""] {
        let v = format!(r#"{{"host":"10.0.0.1","port":80,"name":"a","weight":{weight}}}"#);
        assert_eq!(reason(&v), "invalid_weight", "{v}");
    }
    let v = r#"{"host":"10.0.0.1","port":80,"name":"a","weight":256}"#;
    assert_eq!(decode(v).unwrap().weight, Weight::new(256));
}

#[test]
fn b11_too_large_checked_before_parsing() {
    // Not even JSON: the size check comes first.
    let big = vec![b'x'; 1 << 20];
    assert_eq!(
        Registration::decode(&big),
        Err(RegistrationError::TooLarge { len: 1 << 20 })
    );
}

#[test]
fn b12_deep_nesting_is_a_parse_error() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // Over the size limit on its own; make sure nesting also fails under the limit.
    assert_eq!(
        Registration::decode(deep.as_bytes()).unwrap_err().reason(),
        "too_large"
    );
    let deep = format!(
        r#"{{"host":"10.0.0.1","port":80,"name":"a","labels":{}{}}}"#,
        "[".repeat(1_000),
        "]".repeat(1_000)
    );
    assert_eq!(reason(&deep), "parse_error");
}

#[test]
fn b13_duplicate_fields() {
    assert_eq!(
        reason(r#"{"host":"10.0.0.1","port":80,"port":22,"name":"a"}"#),
        "parse_error"
    );
}

#[test]
fn b15_invalid_utf8() {
    let mut v = br#"{"host":"10.0.0.1","port":80,"name":"a"#.to_vec();
    v.extend_from_slice(&[0xff, 0xfe]);
    v.extend_from_slice(br#""}"#);
    assert_eq!(
        Registration::decode(&v),
        Err(RegistrationError::InvalidUtf8)
    );
}

#[test]
fn b16_not_an_object() {
    for v in ["[]", "\"x\"", "null", "", "{\"host\":\"10.0.0.1\",", "42"] {
        assert_eq!(reason(v), "parse_error", "{v:?}");
    }
    assert_eq!(reason(r#"{"port":80,"name":"a"}"#), "parse_error");
    assert_eq!(
        decode(r#"{"port":80,"name":"a"}"#),
        Err(RegistrationError::MissingField { field: "host" })
    );
}

#[test]
fn b21_labels_are_bounded_but_content_is_free() {
    let v = r#"{"host":"10.0.0.1","port":80,"name":"a","labels":{"note":"x\n${HOME}"}}"#;
    assert_eq!(decode(v).unwrap().labels["note"], "x\n${HOME}");
    let many: Vec<String> = (0..17).map(|i| format!(r#""k{i}":"v""#)).collect();
    let v = format!(
        r#"{{"host":"10.0.0.1","port":80,"name":"a","labels":{{{}}}}}"#,
        many.join(",")
    );
    assert_eq!(reason(&v), "invalid_labels");
    let v = r#"{"host":"10.0.0.1","port":80,"name":"a","labels":{"bad key":"v"}}"#;
    assert_eq!(reason(v), "invalid_labels");
    let v = r#"{"host":"10.0.0.1","port":80,"name":"a","labels":{"k":1}}"#;
    assert_eq!(reason(v), "invalid_labels");
}

#[test]
fn errors_never_echo_the_value() {
    let secret = "s3cr3t-payload";
    for v in [
        format!(r#"{{"host":"{secret}\n","port":80,"name":"a"}}"#),
        format!(r#"{{"host":"10.0.0.1","port":80,"name":"{secret} x"}}"#),
        format!(
            r#"{{"host":"10.0.0.1","port":80,"name":"a","haproxy_server_options":"{secret}"}}"#
        ),
    ] {
        let msg = decode(&v).unwrap_err().to_string();
        assert!(!msg.contains(secret), "{msg}");
    }
}

fn arb_registration() -> impl Strategy<Value = Registration> {
    let host = prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|ip| Host::Ip(IpAddr::V4(ip))),
        any::<std::net::Ipv6Addr>().prop_map(|ip| Host::Ip(IpAddr::V6(ip))),
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z][a-z0-9]{0,5}){0,3}".prop_map(Host::Dns),
    ];
    let option = prop_oneof![
        Just(ServerOption::Backup),
        Just(ServerOption::Check),
        (0u16..=256).prop_map(|w| ServerOption::Weight(Weight::new(w).unwrap())),
        (0..=MAX_MAXCONN).prop_map(ServerOption::MaxConn),
        (1..=MAX_TIME_MS).prop_map(ServerOption::Inter),
        (1u16..=1000).prop_map(ServerOption::Rise),
    ];
    (
        host,
        1u16..,
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
        proptest::option::of(0u16..=256),
        proptest::option::of(proptest::collection::vec(option, 0..4)),
        proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4),
    )
        .prop_map(|(host, port, name, weight, opts, labels)| Registration {
            host,
            port: Port::new(port).unwrap(),
            name: InstanceId::new(name).unwrap(),
            weight: weight.and_then(Weight::new),
            haproxy_server_options: opts.map(ServerOptions::new),
            labels,
        })
}

proptest! {
    #[test]
    fn encode_decode_round_trips(reg in arb_registration()) {
        prop_assert_eq!(Registration::decode(reg.encode().as_bytes()), Ok(reg));
    }

    #[test]
    fn decode_never_panics_and_accepts_only_safe_text(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(reg) = Registration::decode(&bytes) {
            let name = reg.server_name();
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
            if let Some(o) = &reg.haproxy_server_options {
                prop_assert!(o.to_string().bytes().all(|b| b.is_ascii_alphanumeric() || b == b' '));
            }
        }
    }

    #[test]
    fn decode_of_arbitrary_strings_never_panics(s in ".{0,300}") {
        let _ = Registration::decode(s.as_bytes());
    }
}
