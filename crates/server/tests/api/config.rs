//! Bad configuration stops the real binary at once, with one line naming the setting.

use std::process::Command;

fn run(envs: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courierx"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("run courierx");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_settings_fail_fast_naming_the_setting() {
    for (envs, setting) in [
        (
            vec![("COURIERX_LISTEN", "not-an-address")],
            "COURIERX_LISTEN",
        ),
        (vec![("COURIERX_SIGNUP", "sometimes")], "COURIERX_SIGNUP"),
        (vec![("COURIERX_LOG_FORMAT", "xml")], "COURIERX_LOG_FORMAT"),
        (
            vec![("COURIERX_SECRET_KEY", "too-short")],
            "COURIERX_SECRET_KEY",
        ),
        (
            vec![("DATABASE_URL", "postgres://localhost/x")],
            "COURIERX_SECRET_KEY",
        ),
        (
            vec![("DATABASE_URL", "mysql://localhost/x")],
            "DATABASE_URL",
        ),
        (
            vec![("COURIERX_MAX_ATTEMPTS", "-3")],
            "COURIERX_MAX_ATTEMPTS",
        ),
    ] {
        let (code, stderr) = run(&envs, &["serve"]);
        assert_eq!(code, 2, "{envs:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(setting),
            "{envs:?} should name {setting}: {stderr}"
        );
    }
}

#[test]
fn bad_config_file_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("courierx.toml"),
        "listen = \"127.0.0.1:0\"\nfrobnicate = 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courierx"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn migrate_and_admin_create_user() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, err) = run(&[("COURIERX_DATA_DIR", data)], &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_courierx"))
        .args([
            "admin",
            "create-user",
            "--email",
            "ops@acme.test",
            "--tenant",
            "Acme Ops",
        ])
        .env_clear()
        .env("COURIERX_DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("one-time password"), "{stdout}");
    assert!(
        dir.path().join("data").join("courierx.db").exists(),
        "migrate created the embedded database"
    );
}
