//! The command line without root: `braid check` on good and bad files, `braid show` without a daemon.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";
const K2: &str = "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0dfdedddc";

fn good() -> String {
    format!(
        r#"[gateway]
name = "onprem-1"
control_socket = "/tmp/braid-cli-test-none.sock"

[[uplink]]
name = "isp1"
local = "198.51.100.1"

[[tunnel]]
name = "t1"
uplink = "isp1"
remote = "198.51.100.2"
inside = "169.254.21.2/30"
static = {{ cipher = "chacha20poly1305", spi_out = "0x1000", spi_in = "0x2000", key_out = "{K1}", key_in = "{K2}" }}
"#
    )
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("braid-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn braid(args: &[&str]) -> std::process::Output {
    Command::new(common::binary()).args(args).output().unwrap()
}

#[test]
fn check_accepts_a_good_file_and_warns_about_spofs() {
    let d = tmpdir("good");
    let f = d.join("gw.toml");
    std::fs::write(&f, good()).unwrap();
    let out = braid(&["check", "-c", f.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"));
    assert!(stdout.contains("only one tunnel"), "{stdout}");
    // Secrets never printed.
    assert!(!stdout.contains(&K1[..16]) && !stdout.contains(&K2[..16]));
    let out = braid(&["check", "--json", "-c", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["tunnels"], 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn check_names_file_key_and_problem() {
    let d = tmpdir("bad");
    let f = d.join("gw.toml");
    for (from, to, key, problem) in [
        (
            "name = \"t1\"",
            "name = \"t1\"\nmystery = 3",
            "line 11",
            "unknown field `mystery`",
        ),
        ("0x2000", "0x00ff", "static.spi_in", "reserved"),
        (
            "remote = \"198.51.100.2\"",
            "remote = \"198.51.100.2:99999\"",
            "remote",
            "ADDRESS:PORT",
        ),
        (
            "uplink = \"isp1\"",
            "uplink = \"isp2\"",
            "tunnel[0] \"t1\".uplink",
            "no uplink named \"isp2\"",
        ),
    ] {
        std::fs::write(&f, good().replace(from, to)).unwrap();
        let out = braid(&["check", "-c", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(f.to_str().unwrap()), "file not named: {err}");
        assert!(err.contains(key), "key {key} not named: {err}");
        assert!(err.contains(problem), "problem {problem} not said: {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn check_refuses_a_key_file_readable_by_others() {
    let d = tmpdir("perm");
    let key = d.join("out.key");
    std::fs::write(&key, K1).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let f = d.join("gw.toml");
    std::fs::write(
        &f,
        good().replace(&format!("key_out = \"{K1}\""), "key_out_file = \"out.key\""),
    )
    .unwrap();
    let out = braid(&["check", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key_out_file") && err.contains("mode 0640") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(braid(&["check", "-c", f.to_str().unwrap()])
        .status
        .success());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn show_without_a_daemon_is_a_clear_error() {
    let out = braid(&["show", "tunnels", "-s", "/tmp/braid-no-such-daemon.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("braid-no-such-daemon.sock"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(braid(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(braid(&["show", "everything"]).status.code(), Some(2));
    assert!(braid(&["--help"]).status.success());
}

/// `braid bench` runs without root and reports sane figures: every packet of both directions goes through,
/// the rates are positive and the data path is not faster than ring's AEAD alone by more than noise.
#[test]
fn bench_runs_and_prints_sane_numbers() {
    let out = braid(&["bench", "--secs", "0.2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "raw ring AEAD seal",
        "ESP seal",
        "outbound",
        "inbound",
        "Gbit/s",
        "Mpps",
    ] {
        assert!(stdout.contains(line), "{line:?} missing in:\n{stdout}");
    }
    for cipher in ["aes256gcm16", "chacha20poly1305"] {
        let out = braid(&[
            "bench", "--secs", "0.2", "--json", "--size", "512", "--cipher", cipher,
        ]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cipher"], cipher);
        assert_eq!(v["size"], 512);
        for dir in [
            "raw_seal",
            "esp_seal",
            "outbound",
            "outbound_tso",
            "inbound",
        ] {
            let gbit = v[dir]["gbit_s"].as_f64().unwrap();
            let mpps = v[dir]["mpps"].as_f64().unwrap();
            assert!(gbit > 0.0 && gbit < 1000.0, "{dir} {gbit} Gbit/s");
            assert!(
                (gbit - mpps * 1e6 * 512.0 * 8.0 / 1e9).abs() < 1e-6 * gbit.max(1.0),
                "{dir}: Gbit/s and Mpps disagree"
            );
            assert!(v[dir]["packets"].as_u64().unwrap() >= 256);
        }
        for ratio in ["esp_seal_vs_raw", "outbound_vs_raw", "outbound_vs_esp_seal"] {
            let r = v[ratio].as_f64().unwrap();
            assert!(r > 0.0 && r < 1.5, "{ratio} {r}");
        }
    }
    let out = braid(&["bench", "--secs", "0.2", "--loopback", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rejected"], 0);
    assert!(v["received"]["packets"].as_u64().unwrap() > 0, "{v}");
    assert!(v["received"]["gbit_s"].as_f64().unwrap() > 0.0);
    // Batched system calls, and the report says which mode ran.
    let send_mode = v["send_mode"].as_str().unwrap();
    assert!(send_mode.starts_with("sendmmsg"), "{v}");
    assert!(
        v["recv_mode"].as_str().unwrap().starts_with("recvmmsg"),
        "{v}"
    );
    assert!(v["datagrams_per_send"].as_f64().unwrap() >= 1.0, "{v}");
    assert!(v["datagrams_per_recv"].as_f64().unwrap() >= 1.0, "{v}");
    let out = braid(&["bench", "--secs", "0.2", "--loopback"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in ["batched syscalls", "sendmmsg", "recvmmsg", "loss"] {
        assert!(stdout.contains(line), "{line:?} missing in:\n{stdout}");
    }
    let bad = braid(&["bench", "--cipher", "des", "--secs", "0.1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cipher"));
    let bad = braid(&["bench", "--size", "20", "--secs", "0.1"]);
    assert_eq!(bad.status.code(), Some(1));
    // Many flows: every flow's packet went out once (the spread adds up to them), the rounds take them in turn.
    let out = braid(&["bench", "--secs", "0.1", "--flows", "300", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flows"], 300);
    let spread: Vec<u64> = v["tunnel_spread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(spread.iter().sum::<u64>(), 512, "{v}");
    assert!(spread.iter().all(|&n| n > 0), "{v}");
    for flows in ["0", "16385"] {
        let bad = braid(&["bench", "--flows", flows, "--secs", "0.1"]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("--flows"));
    }
}
