//! A real `moto` server (the AWS mock, from PyPI) on loopback, standing in for EC2 in the
//! `ec2tag` tests, and a small boto3 driver to create, tag and stop instances.
//!
//! The VPC is `127.0.0.0/16` with a subnet `127.0.N.0/24` (N different for each server a
//! test process starts, so parallel tests never share an address), so every instance moto
//! starts gets a loopback private address (`127.0.N.4`, `.5`, … in order): tests can
//! listen on those addresses and route real requests to them without leaving the machine.
//!
//! moto comes from the project's venv (`scripts/install-deps` makes `.venv`); `MOTO_VENV`
//! overrides where to look.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::ports::{free_port, wait_listening};
use crate::process::{ChildProcess, OnDrop};
use crate::workdir::Workdir;

/// A running moto server with an EC2 VPC on loopback.
#[derive(Debug)]
pub struct Moto {
    _process: ChildProcess,
    port: u16,
    venv: PathBuf,
    dir: Workdir,
    subnet: String,
}

/// An instance moto started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: String,
    pub private_ip: String,
}

/// The venv that holds moto: `$MOTO_VENV`, else `<workspace>/.venv`.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("MOTO_VENV") {
        return PathBuf::from(v);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join(".venv"))
        .unwrap_or_else(|| PathBuf::from(".venv"))
}

const BOTO: &str = r#"
import boto3, json, sys
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
args = json.loads(sys.argv[2])
op = args["op"]
if op == "vpc":
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    sub = ec2.create_subnet(VpcId=vpc, CidrBlock=args["cidr"])["Subnet"]["SubnetId"]
    print(json.dumps({"subnet": sub}))
elif op == "run":
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    tags = [{"Key": k, "Value": v} for k, v in args["tags"].items()]
    spec = [{"ResourceType": "instance", "Tags": tags}] if tags else []
    r = ec2.run_instances(ImageId=ami, MinCount=args["count"], MaxCount=args["count"],
                          SubnetId=args["subnet"], TagSpecifications=spec)
    print(json.dumps([{"id": i["InstanceId"], "ip": i["PrivateIpAddress"]} for i in r["Instances"]]))
elif op == "stop":
    ec2.stop_instances(InstanceIds=args["ids"]); print("[]")
elif op == "start":
    ec2.start_instances(InstanceIds=args["ids"]); print("[]")
elif op == "untag":
    ec2.delete_tags(Resources=args["ids"], Tags=[{"Key": args["key"]}]); print("[]")
"#;

impl Moto {
    /// Starts `moto_server` on a free loopback port and creates the loopback VPC.
    pub async fn start() -> Self {
        let venv = venv();
        let server = venv.join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/install-deps",
            server.display()
        );
        let dir = Workdir::new();
        let port = free_port();
        let mut cmd = Command::new(&server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = ChildProcess::spawn(cmd, &dir.join("moto.log"), OnDrop::Kill)
            .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
        wait_listening(port, Duration::from_secs(20), "moto").await;
        let mut moto = Self {
            _process: process,
            port,
            venv,
            dir,
            subnet: String::new(),
        };
        static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);
        let octet = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        assert!(octet < 250, "too many moto servers in one test process");
        let cidr = format!("127.0.{octet}.0/24");
        let out = moto
            .boto(serde_json::json!({"op": "vpc", "cidr": cidr}))
            .await;
        moto.subnet = out["subnet"]
            .as_str()
            .unwrap_or_else(|| panic!("no subnet in {out}"))
            .to_owned();
        moto
    }

    /// The EC2 endpoint URL, for synapse's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `count` running instances with `tags` in the loopback subnet.
    pub async fn run_instances(&self, count: usize, tags: &[(&str, &str)]) -> Vec<Ec2Instance> {
        let tags: serde_json::Map<String, serde_json::Value> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let out = self
            .boto(serde_json::json!({"op": "run", "count": count, "tags": tags, "subnet": self.subnet}))
            .await;
        out.as_array()
            .unwrap_or_else(|| panic!("bad run_instances output {out}"))
            .iter()
            .map(|i| Ec2Instance {
                id: i["id"].as_str().unwrap_or_default().to_owned(),
                private_ip: i["ip"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    pub async fn stop_instances(&self, ids: &[&str]) {
        self.boto(serde_json::json!({"op": "stop", "ids": ids}))
            .await;
    }

    pub async fn start_instances(&self, ids: &[&str]) {
        self.boto(serde_json::json!({"op": "start", "ids": ids}))
            .await;
    }

    pub async fn untag(&self, ids: &[&str], key: &str) {
        self.boto(serde_json::json!({"op": "untag", "ids": ids, "key": key}))
            .await;
    }

    async fn boto(&self, args: serde_json::Value) -> serde_json::Value {
        let script = self.dir.write("boto.py", BOTO);
        let out = tokio::process::Command::new(self.venv.join("bin/python"))
            .arg(&script)
            .arg(self.endpoint())
            .arg(args.to_string())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run the venv's python: {e}"));
        assert!(
            out.status.success(),
            "boto3 {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "boto3 {args} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
