//! Golden files for `nerve status`: the table (and `-o wide`) for fixed status documents
//! in `nerve/tests/golden/*.json` — two from a real run of `scripts/demo` (all healthy;
//! web-a failing its check), one with every kind of trouble, and one reporting to
//! ZooKeeper (one service there only, one in etcd too). `UPDATE_GOLDEN=1`
//! rewrites the `.txt` files.

use std::path::{Path, PathBuf};

use integration_tests::check_golden;
use nerve::status_table::render;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn status_tables() {
    for name in [
        "status-healthy",
        "status-draining",
        "status-trouble",
        "status-zookeeper",
    ] {
        let input = std::fs::read_to_string(golden_dir().join(format!("{name}.json")))
            .expect("golden input");
        let doc: serde_json::Value = serde_json::from_str(&input).expect("JSON");
        for (wide, suffix) in [(false, ""), (true, "-wide")] {
            let text = render(&doc, wide, false).expect("render");
            check_golden(&golden_dir().join(format!("{name}{suffix}.txt")), &text);
        }
        let coloured = render(&doc, false, true).expect("render");
        assert!(coloured.contains("\x1b["), "{name}: no colour when asked");
    }
    assert!(render(&serde_json::json!({"ready": true}), false, false).is_err());
}
