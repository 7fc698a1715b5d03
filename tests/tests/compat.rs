//! The compatibility corpus (`../shared/compat/` beside the checkout; README there): real
//! airbnb/Yelp SmartStack configs. Every file either loads, or is refused with exactly
//! one error line naming the upstream method or reporter this build lacks, or (where
//! the file is wrong upstream too) with one error at the wrong key. The ZooKeeper files
//! load as they are (issue 20), and again with etcd in ZooKeeper's place.
//!
//! The corpus is found at `$SMARTSTACK_COMPAT_DIR`, else at `<repo>/../shared/compat`.
//! A missing corpus fails the test: it must never pass by reading nothing.

use serde_json::json;

use common::upstream::{corpus_dir as corpus, corpus_file as read, corpus_with_etcd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Loads,
    /// Refused with one line naming this.
    Refused(&'static str),
    /// One error, at this key path: the file is wrong upstream as well.
    ErrorAt(&'static str),
}
use Outcome::{ErrorAt, Loads, Refused};

/// ZooKeeper discovery and the ZooKeeper reporter load (issue 20).
const ZK_DISCOVERY: Outcome = Loads;
const ZK_REPORTER: Outcome = Loads;

/// The corpus files that use ZooKeeper.
const ZK_FILES: &[&str] = &[
    "synapse/01-airbnb-synapse-conf.json",
    "synapse/02-airbnb-discovery-multi.json",
    "synapse/05-airbnb-spec-minimum-conf-yaml.json",
    "synapse/06-airbnb-readme-shared-frontend-yaml.json",
    "synapse/07-airbnb-2012-minimum-services-list-yaml.json",
    "synapse/19-yelp-synapse-tools-generated-zk.json",
    "synapse/20-yelp-synapse-tools-generated-nginx.json",
    "synapse-services/04-airbnb-spec-multi-test.json",
    "nerve/01-airbnb-nerve-example.json",
    "nerve/02-yelp-nerve-example-prometheus.json",
    "nerve/03-airbnb-2013-service_checks.json",
    "nerve/08-yelp-nerve-tools-generated-zk.json",
    "nerve-services/02-airbnb-zookeeper_service1.json",
    "nerve-services/04-airbnb-pr23-service1-no-reporter.json",
];

/// Every file of the corpus and what it must do. A file not listed fails the test.
const EXPECTED: &[(&str, Outcome)] = &[
    ("synapse/01-airbnb-synapse-conf.json", ZK_DISCOVERY),
    // `fallback` names no resolver upstream either (no such class exists).
    (
        "synapse/02-airbnb-discovery-multi.json",
        ErrorAt("services.service1.discovery.resolver.method:"),
    ),
    ("synapse/03-airbnb-hostheader-test-dns.json", Loads),
    ("synapse/04-airbnb-svcdir-test.json", Loads),
    (
        "synapse/05-airbnb-spec-minimum-conf-yaml.json",
        ZK_DISCOVERY,
    ),
    (
        "synapse/06-airbnb-readme-shared-frontend-yaml.json",
        ZK_DISCOVERY,
    ),
    (
        "synapse/07-airbnb-2012-minimum-services-list-yaml.json",
        ZK_DISCOVERY,
    ),
    (
        "synapse/08-airbnb-pr217-yarn-slider.json",
        Refused("`yarn_slider` discovery"),
    ),
    (
        "synapse/09-airbnb-pr119-zookeeper-recursive-yaml.json",
        Refused("`zookeeper_recursive` discovery"),
    ),
    (
        "synapse/19-yelp-synapse-tools-generated-zk.json",
        ZK_DISCOVERY,
    ),
    (
        "synapse/20-yelp-synapse-tools-generated-nginx.json",
        ZK_DISCOVERY,
    ),
    (
        "synapse-services/01-airbnb-synapse_services-service1.json",
        Loads,
    ),
    (
        "synapse-services/02-airbnb-spec-docker-foo.json",
        Refused("`docker` discovery"),
    ),
    (
        "synapse-services/03-airbnb-spec-marathon-foo.json",
        Refused("`marathon` discovery"),
    ),
    // Its resolver `base` is a stub upstream (it resolves nothing).
    (
        "synapse-services/04-airbnb-spec-multi-test.json",
        ErrorAt("services.04-airbnb-spec-multi-test.discovery.resolver.method:"),
    ),
    (
        "synapse-services/05-airbnb-spec-ec2tag-ec2tagtest.json",
        Loads,
    ),
    ("nerve/01-airbnb-nerve-example.json", ZK_REPORTER),
    ("nerve/02-yelp-nerve-example-prometheus.json", ZK_REPORTER),
    ("nerve/03-airbnb-2013-service_checks.json", ZK_REPORTER),
    ("nerve/08-yelp-nerve-tools-generated-zk.json", ZK_REPORTER),
    ("nerve-services/01-airbnb-etcd_service1.json", Loads),
    (
        "nerve-services/02-airbnb-zookeeper_service1.json",
        ZK_REPORTER,
    ),
    (
        "nerve-services/03-airbnb-pr82-serf_service1.json",
        Refused("the `serf` reporter"),
    ),
    (
        "nerve-services/04-airbnb-pr23-service1-no-reporter.json",
        ZK_REPORTER,
    ),
];

/// `(file name, corpus file)` in a rebuilt `service_conf_dir`.
type DirFiles = &'static [(&'static str, &'static str)];

/// Files a corpus config's relative `service_conf_dir` held in its repository, rebuilt
/// from the corpus: `(config, dir, files)`.
const CONF_DIRS: &[(&str, &str, DirFiles)] = &[
    (
        "synapse/04-airbnb-svcdir-test.json",
        "config/synapse_services",
        &[(
            "service1.json",
            "synapse-services/01-airbnb-synapse_services-service1.json",
        )],
    ),
    (
        "nerve/01-airbnb-nerve-example.json",
        "example/nerve_services",
        &[
            (
                "etcd_service1.json",
                "nerve-services/01-airbnb-etcd_service1.json",
            ),
            (
                "zookeeper_service1.json",
                "nerve-services/02-airbnb-zookeeper_service1.json",
            ),
        ],
    ),
    (
        "nerve/02-yelp-nerve-example-prometheus.json",
        "example/nerve_services",
        &[
            (
                "etcd_service1.json",
                "nerve-services/01-airbnb-etcd_service1.json",
            ),
            (
                "zookeeper_service1.json",
                "nerve-services/02-airbnb-zookeeper_service1.json",
            ),
        ],
    ),
];

/// What loading a config gave: the error lines, and the warning lines.
struct Loaded {
    errors: Vec<String>,
    warnings: Vec<String>,
}

fn lines(errors: &common::config::ConfigErrors) -> Vec<String> {
    errors.to_string().lines().map(str::to_owned).collect()
}

fn warning_lines(warnings: &[common::config::ConfigError]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect()
}

/// Loads corpus file `rel` (text `text`) as its daemon would, laid out in a temporary
/// directory: a `*-services/` file in a `service_conf_dir` next to a minimal wrapper.
fn load(rel: &str, text: &str) -> Loaded {
    let dir = tempfile::tempdir().expect("tempdir");
    let (kind, file) = rel.split_once('/').expect("kind/file");
    for (config, sub, files) in CONF_DIRS {
        if *config == rel {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            for (name, source) in *files {
                std::fs::write(dir.path().join(sub).join(name), read(source)).expect("write");
            }
        }
    }
    let config = dir.path().join("config.json");
    match kind {
        "synapse" | "nerve" => std::fs::write(&config, text).expect("write"),
        _ => {
            std::fs::create_dir(dir.path().join("services")).expect("mkdir");
            std::fs::write(dir.path().join("services").join(file), text).expect("write");
            let wrapper = if kind == "synapse-services" {
                json!({"service_conf_dir": "services",
                       "file_output": {"output_directory": dir.path().join("out")}})
            } else {
                json!({"instance_id": "compat", "service_conf_dir": "services"})
            };
            std::fs::write(&config, wrapper.to_string()).expect("write");
        }
    }
    let warnings = if kind.starts_with("synapse") {
        synapse::Config::load(&config).map(|c| c.warnings)
    } else {
        nerve::config::load(&config, &nerve::config::Overrides::default()).map(|c| c.warnings)
    };
    match warnings {
        Ok(w) => Loaded {
            errors: Vec::new(),
            warnings: warning_lines(&w),
        },
        Err(e) => Loaded {
            errors: lines(&e),
            warnings: Vec::new(),
        },
    }
}

fn check(rel: &str, text: &str, expected: Outcome) -> Result<(), String> {
    let loaded = load(rel, text);
    match (expected, loaded.errors.as_slice()) {
        (Loads, []) => Ok(()),
        (Refused(what), [line]) if line.contains(what) && line.contains("not supported") => Ok(()),
        (ErrorAt(path), [line]) if line.starts_with(path) => Ok(()),
        (_, errors) => Err(format!(
            "{rel}: expected {expected:?}, got {} error line(s):\n  {}",
            errors.len(),
            errors.join("\n  ")
        )),
    }
}

#[test]
fn every_corpus_file_loads_or_is_refused_with_one_line_naming_the_method() {
    let root = corpus();
    let mut on_disk = Vec::new();
    for kind in ["synapse", "synapse-services", "nerve", "nerve-services"] {
        for entry in std::fs::read_dir(root.join(kind)).expect("corpus dir") {
            let name = entry.expect("entry").file_name();
            on_disk.push(format!("{kind}/{}", name.to_string_lossy()));
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = EXPECTED.iter().map(|(f, _)| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every corpus file has an expected outcome");

    let failures: Vec<String> = EXPECTED
        .iter()
        .filter_map(|(rel, expected)| check(rel, &read(rel), *expected).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ZooKeeper files load as they are, and with etcd in ZooKeeper's place too (the
/// shapes upstream accepted and the upstream keys that do nothing here included), except
/// where the file is wrong upstream as well.
#[test]
fn zookeeper_corpus_files_load_as_they_are_and_with_etcd_in_zookeepers_place() {
    let mut failures = Vec::new();
    let mut warned = Vec::new();
    for rel in ZK_FILES {
        let expected = EXPECTED
            .iter()
            .find(|(f, _)| f == rel)
            .map(|(_, o)| *o)
            .expect("listed");
        for text in [read(rel), corpus_with_etcd(rel)] {
            if let Err(e) = check(rel, &text, expected) {
                failures.push(e);
            }
            warned.extend(load(rel, &text).warnings);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The upstream keys in these files were each named by one warning.
    for key in [
        "statsd: ignored",
        "nginx: ignored",
        "test_service.nginx_listener: skipped",
        "zk_cluster_name: ignored",
        "machine_check: ignored",
    ] {
        assert!(
            warned.iter().any(|w| w.contains(key)),
            "no warning for {key} in {warned:#?}"
        );
    }
}
