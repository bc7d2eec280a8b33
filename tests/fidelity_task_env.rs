//! The configuration and environment a task gets, read back by the real clearml SDK
//! (pinned, from `scripts/python-venv.sh`) against the embedded server: the SDK sees
//! `default_output_uri` and the storage credentials from the file the agent wrote, uploads
//! to the files server with nothing but that file, and the script sees the `environment {}`
//! section, the task's Environment hyperparameters and the `TRAINS_*` twins.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use clearml_agent::api::{ApiClient, ApiSettings};
use clearml_agent::config::Config;
use clearml_agent::effects::task_env::{
    environment_hyperparams, task_environment, write_config_file, write_files, TaskEnvConfig,
    TaskEnvInput,
};
use common::server::TestServer;
use serde_json::{json, Value};

#[test]
fn the_sdk_reads_the_configuration_the_agent_hands_the_task() {
    let venv = common::python_venv();
    let d = tempfile::tempdir().unwrap();
    let server = TestServer::start(&d.path().join("srv"));
    let task = server.create_task("fidelity env");
    server
        .call(
            "tasks.edit_hyper_params",
            json!({"task": task, "hyperparams": [
                {"section": "Environment", "name": "FROM_TASK", "value": "hp-value"},
                {"section": "Args", "name": "lr", "value": "0.1"},
            ]}),
        )
        .ok();

    let api = Arc::new(
        ApiClient::new(ApiSettings {
            api_host: server.api.clone(),
            access_key: Some(server.key.clone()),
            secret_key: Some(server.secret.clone()),
            ..ApiSettings::default()
        })
        .unwrap(),
    );
    let hp = environment_hyperparams(&api, &task).unwrap();
    assert_eq!(
        hp,
        BTreeMap::from([("FROM_TASK".to_string(), "hp-value".to_string())])
    );

    let out_uri = format!("{}/fidelity-out", server.files);
    let made = d.path().join("made/by-files-section.txt");
    let text = format!(
        r#"api {{
             api_server: "http://wrong.invalid:1"
             credentials {{ access_key: "{key}", secret_key: "{secret}" }}
           }}
           sdk {{
             development {{ default_output_uri: "{out_uri}" }}
             aws {{ s3 {{ region: "us-east-1", credentials: [ {{ bucket: "ckpt", key: "AKIA-FIDELITY", secret: "s3-secret" }} ] }} }}
           }}
           agent {{ enable_task_env: true }}
           environment {{ FROM_CONF: "conf-value" }}
           files {{ made {{ path: "{made}", contents: "from the files section" }} }}"#,
        key = server.key,
        secret = server.secret,
        made = made.display()
    );
    let config = Config {
        root: clearml_agent::config::hocon::parse(&text, &|_| None).unwrap(),
        source: None,
    };
    let cfg = TaskEnvConfig::from_config(&config, &|_| None);
    let checkout = d.path().join("code");
    std::fs::create_dir_all(&checkout).unwrap();
    let conf_file = d.path().join("proc/clearml.conf");
    let te = task_environment(
        &cfg,
        &TaskEnvInput {
            config: &config,
            task_id: &task,
            worker_id: "fidelity:0",
            log_level: Some("info"),
            config_file: &conf_file,
            api_server: &server.api,
            web_server: &server.api,
            files_server: &server.files,
            env_hyperparams: &hp,
            checkout: &checkout,
            working_dir: ".",
            entry_point: "train.py",
            venv_dir: &venv,
            inherited_pythonpath: None,
        },
    );
    write_config_file(&conf_file, &te.config_text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&conf_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    write_files(&te.files, &mut |_| {});
    assert_eq!(
        std::fs::read_to_string(&made).unwrap(),
        "from the files section"
    );

    let local = d.path().join("weights.bin");
    std::fs::write(&local, b"checkpoint bytes").unwrap();
    let script = r#"
import json, os, sys
from clearml.config import config_obj
from clearml.backend_config.bucket_config import S3BucketConfigurations
from clearml import StorageManager
s3 = S3BucketConfigurations.from_config(config_obj.get("sdk.aws.s3")).get_config_by_uri("s3://ckpt/run/model.pt")
uri = config_obj.get("sdk.development.default_output_uri")
uploaded = StorageManager.upload_file(sys.argv[1], uri + "/weights.bin", wait_for_upload=True)
print(json.dumps({
    "default_output_uri": uri,
    "s3_key": s3.key, "s3_secret": s3.secret,
    "api_server": config_obj.get("api.api_server"),
    "uploaded": uploaded,
    "env": {k: os.environ.get(k) for k in ["FROM_CONF", "FROM_TASK", "TRAINS_TASK_ID", "TRAINS_CONFIG_FILE", "CLEARML_LOG_LEVEL"]},
}))
"#;
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg("-c")
        .arg(script)
        .arg(&local)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // An empty home: no ~/clearml.conf to fall back on.
        .env("HOME", d.path().join("home"))
        .current_dir(&checkout);
    for (k, v) in &te.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["default_output_uri"], out_uri.as_str());
    assert_eq!(seen["s3_key"], "AKIA-FIDELITY");
    assert_eq!(seen["s3_secret"], "s3-secret");
    // The agent's host, not the file's stale one.
    assert_eq!(seen["api_server"], server.api.as_str());
    assert_eq!(seen["env"]["FROM_CONF"], "conf-value");
    assert_eq!(seen["env"]["FROM_TASK"], "hp-value");
    assert_eq!(seen["env"]["TRAINS_TASK_ID"], task.as_str());
    assert_eq!(
        seen["env"]["TRAINS_CONFIG_FILE"],
        conf_file.display().to_string()
    );
    assert_eq!(seen["env"]["CLEARML_LOG_LEVEL"], "INFO");
    // The upload really reached the files server, with only the handed configuration.
    let url = seen["uploaded"].as_str().expect("an uploaded URL");
    assert!(url.starts_with(&out_uri), "{url}");
    let body = server
        .http()
        .get(url)
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec();
    assert_eq!(body, b"checkpoint bytes");
}
