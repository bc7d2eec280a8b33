//! `clearml-agent init`: writes `~/clearml.conf` (mode 0600) as upstream's wizard
//! (`commands/config.py`): paste the credentials block from the web app, confirm the API, web
//! and files hosts, verify the credentials against the server (`auth.login`), choose a default
//! output URI, git user and token, extra index URLs. Flags answer any of it; with every
//! answer given, or without a terminal on stdin, nothing is asked. An existing non-empty file
//! is replaced only after a "y" at the prompt, or with `--force`.
//!
//! Unlike upstream, the git token is read without echo and never printed, and a failed
//! verification never prints the secret.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::api::{ApiClient, ApiSettings, TlsOptions};
use crate::config::{expand_home, hocon};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct InitArgs {
    /// Where to write [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// The API server, e.g. http://localhost:8008.
    #[arg(long)]
    pub api_host: Option<String>,
    /// The web application [default: derived from the API host].
    #[arg(long)]
    pub web_host: Option<String>,
    /// The files server [default: derived from the API host].
    #[arg(long)]
    pub files_host: Option<String>,
    #[arg(long)]
    pub access_key: Option<String>,
    /// Also CLEARML_API_SECRET_KEY.
    #[arg(long, env = "CLEARML_API_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Git user for cloning over https (empty: ssh keys).
    #[arg(long)]
    pub git_user: Option<String>,
    /// Git password or personal token (also CLEARML_AGENT_GIT_PASS).
    #[arg(long, env = "CLEARML_AGENT_GIT_PASS", hide_env_values = true)]
    pub git_pass: Option<String>,
    /// Extra package index (repeatable).
    #[arg(long)]
    pub extra_index_url: Vec<String>,
    /// `none`, `server` (the files server) or a URI (s3://bucket/path, ...).
    #[arg(long)]
    pub default_output_uri: Option<String>,
    /// Replace an existing configuration file without asking.
    #[arg(long)]
    pub force: bool,
    /// Do not check the credentials against the server.
    #[arg(long)]
    pub no_verify: bool,
    /// Never prompt, even on a terminal (missing answers are an error).
    #[arg(long)]
    pub non_interactive: bool,
}

const DESCRIPTION: &str = "\
Please create new clearml credentials through the settings page in your `clearml-server` web app,
or create a free account at https://app.clear.ml/settings/webapp-configuration

In the settings > workspace page, press \"Create new credentials\", then press \"Copy to clipboard\".

Paste copied configuration here:
";

/// Reads answers and writes prompts: the terminal, or any reader/writer in tests.
pub struct Prompter<'a> {
    input: &'a mut dyn BufRead,
    output: &'a mut dyn Write,
    /// stdin is a terminal: secrets are read without echo.
    tty: bool,
}

impl Prompter<'_> {
    fn say(&mut self, text: &str) {
        let _ = writeln!(self.output, "{text}");
    }

    fn ask(&mut self, prompt: &str) -> Result<String> {
        write!(self.output, "{prompt}")?;
        self.output.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            bail!("no answer (end of input) to: {}", prompt.trim());
        }
        Ok(line.trim().to_string())
    }

    /// Like [`Self::ask`], without echo on a terminal.
    fn ask_secret(&mut self, prompt: &str) -> Result<String> {
        let _guard = self.tty.then(NoEcho::new).flatten();
        let answer = self.ask(prompt);
        if self.tty {
            let _ = writeln!(self.output);
        }
        answer
    }

    fn ask_url(&mut self, what: &str, default: Option<&str>) -> Result<String> {
        loop {
            let shown = default.map(|d| format!("[{d}] ")).unwrap_or_default();
            let a = self.ask(&format!("{what} configured to: {shown}"))?;
            if a.is_empty() || a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes") {
                if let Some(d) = default {
                    return Ok(d.to_string());
                }
                continue;
            }
            if let Some(u) = normalize_url(&a) {
                return Ok(u);
            }
            self.say(&format!("Could not parse url {a}"));
        }
    }
}

/// Turns echo off on stdin while it lives.
struct NoEcho(libc::termios);

impl NoEcho {
    fn new() -> Option<NoEcho> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(0, libc::TCSANOW, &t) == 0).then_some(NoEcho(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

/// `host:port` -> `http://host:port`, a bare host -> `https://host` (upstream's
/// `verify_url`); a trailing `/` dropped. `None` for other schemes.
pub fn normalize_url(input: &str) -> Option<String> {
    let s = input.trim();
    if s.is_empty() {
        return None;
    }
    let s = if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else if s.contains("://") {
        return None;
    } else if s.contains(':') {
        format!("http://{s}")
    } else {
        format!("https://{s}")
    };
    let u = reqwest::Url::parse(&s).ok()?;
    (matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .then(|| s.trim_end_matches('/').to_string())
}

/// (api, web, files) from one of them, as upstream's `parse_host`: `app.`/`api.` host
/// prefixes, or the 8008/8080/8081 ports.
pub fn derive_hosts(url: &str) -> (String, String, String) {
    let Ok(u) = reqwest::Url::parse(url) else {
        return (url.into(), url.into(), url.into());
    };
    let host = u.host_str().unwrap_or("");
    let scheme = u.scheme();
    let path = u.path().trim_end_matches('/');
    let with = |h: &str, port: Option<u16>| match port {
        Some(p) => format!("{scheme}://{h}:{p}{path}"),
        None => format!("{scheme}://{h}{path}"),
    };
    let port = u.port();
    if let Some(rest) = host.strip_prefix("app.") {
        return (
            with(&format!("api.{rest}"), port),
            with(host, port),
            with(&format!("files.{rest}"), port),
        );
    }
    if let Some(rest) = host.strip_prefix("api.") {
        return (
            with(host, port),
            with(&format!("app.{rest}"), port),
            with(&format!("files.{rest}"), port),
        );
    }
    match port {
        Some(8008) | Some(8080) => (
            with(host, Some(8008)),
            with(host, Some(8080)),
            with(host, Some(8081)),
        ),
        _ => (url.into(), url.into(), url.into()),
    }
}

/// What the pasted block says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pasted {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub api_server: Option<String>,
    pub web_server: Option<String>,
    pub files_server: Option<String>,
}

/// Parses the web app's "copy to clipboard" block (`api { ... }` or its inner part).
pub fn parse_pasted(text: &str) -> Pasted {
    let Ok(v) = hocon::parse(text, &|_| None) else {
        return Pasted::default();
    };
    let api = v.get("api").cloned().unwrap_or(v.clone());
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let creds = api.get("credentials").cloned().unwrap_or(Value::Null);
    Pasted {
        access_key: s(&creds, "access_key"),
        secret_key: s(&creds, "secret_key"),
        api_server: s(&api, "api_server").or_else(|| s(&api, "host")),
        web_server: s(&api, "web_server"),
        files_server: s(&api, "files_server"),
    }
}

/// The answers, ready to write.
#[derive(Clone, PartialEq, Eq)]
pub struct Answers {
    pub api: String,
    pub web: String,
    pub files: String,
    pub access_key: String,
    pub secret_key: String,
    pub git_user: Option<String>,
    pub git_pass: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub default_output_uri: Option<String>,
}

/// The configuration file's text.
pub fn render(a: &Answers) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut t =
        String::from("# CLEARML-AGENT configuration file (written by `clearml-agent init`)\n");
    t.push_str(&format!(
        "api {{\n    # Notice: 'api_server' is the api server (default port 8008), not the web server.\n    \
         api_server: {}\n    web_server: {}\n    files_server: {}\n    \
         # Override with os environment: CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY\n    \
         credentials {{\"access_key\": {}, \"secret_key\": {}}}\n}}\n\n",
        q(&a.api),
        q(&a.web),
        q(&a.files),
        q(&a.access_key),
        q(&a.secret_key)
    ));
    t.push_str(&format!(
        "# Set GIT user/pass credentials\n# leave blank for GIT SSH credentials\nagent.git_user: {}\nagent.git_pass: {}\n\n",
        q(a.git_user.as_deref().unwrap_or("")),
        q(a.git_pass.as_deref().unwrap_or(""))
    ));
    let urls: Vec<String> = a.extra_index_urls.iter().map(|u| q(u)).collect();
    t.push_str(&format!(
        "agent.package_manager.extra_index_url: [{}]\n",
        urls.join(", ")
    ));
    if let Some(uri) = &a.default_output_uri {
        t.push_str(&format!(
            "\n# Default Task output_uri. if output_uri is not provided to Task.init, default_output_uri will be used instead.\nsdk.development.default_output_uri: {}\n",
            q(uri)
        ));
    }
    t
}

/// `auth.login` with the key pair against `api`.
pub fn verify_credentials(api: &str, key: &str, secret: &str) -> Result<()> {
    let tls = TlsOptions::resolve(None, &|k| std::env::var(k).ok());
    let client = ApiClient::new(ApiSettings {
        api_host: api.to_string(),
        access_key: Some(key.to_string()),
        secret_key: Some(secret.to_string()),
        max_attempts: 2,
        timeout: std::time::Duration::from_secs(20),
        verify_tls: tls.verify,
        ca_bundle: tls.ca_bundle,
        ..ApiSettings::default()
    })?;
    client.login()?;
    Ok(())
}

/// The file `init` writes.
pub fn target(args: &InitArgs) -> PathBuf {
    args.config_file
        .clone()
        .or_else(|| {
            std::env::var("CLEARML_CONFIG_FILE")
                .ok()
                .filter(|s| !s.is_empty())
                .map(|p| expand_home(&p))
        })
        .unwrap_or_else(|| expand_home("~/clearml.conf"))
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

fn mask(secret: &str) -> String {
    format!("{}***", secret.chars().take(4).collect::<String>())
}

/// The whole wizard over `p` (see the module doc). Returns the exit code.
pub fn wizard(args: &InitArgs, p: &mut Prompter, interactive: bool) -> Result<i32> {
    p.say("CLEARML-AGENT setup process");
    let path = target(args);
    let exists = std::fs::metadata(&path)
        .map(|m| m.is_file() && m.len() > 0)
        .unwrap_or(false);
    if exists && !args.force {
        p.say(&format!(
            "Configuration file already exists: {}",
            path.display()
        ));
        if !interactive {
            bail!(
                "{} exists: not replacing it without --force",
                path.display()
            );
        }
        let a = p.ask("Overwrite it? [y/N] ")?;
        if !matches!(a.to_ascii_lowercase().as_str(), "y" | "yes") {
            p.say("Leaving setup, the file is unchanged.");
            return Ok(0);
        }
    }
    let mut pasted = Pasted::default();
    let have_keys = args.access_key.is_some() && args.secret_key.is_some();
    if interactive && !have_keys {
        p.say(DESCRIPTION.trim_end());
        let mut block = String::new();
        loop {
            let mut line = String::new();
            if p.input.read_line(&mut line)? == 0 {
                break;
            }
            if line.trim().is_empty() && block.trim().is_empty() {
                continue;
            }
            if line.trim().is_empty() {
                break;
            }
            block.push_str(&line);
            if line.trim_end() == "}" {
                break;
            }
        }
        pasted = parse_pasted(&block);
    }
    let mut key = args.access_key.clone().or(pasted.access_key.clone());
    let mut secret = args.secret_key.clone().or(pasted.secret_key.clone());
    while key.as_deref().unwrap_or("").is_empty() || secret.as_deref().unwrap_or("").is_empty() {
        if !interactive {
            bail!("no credentials: pass --access-key and --secret-key");
        }
        p.say("Could not parse credentials, please try entering them manually.");
        key = Some(p.ask("Enter user access key: ")?);
        secret = Some(p.ask_secret("Enter user secret: ")?);
    }
    let (mut key, mut secret) = (key.unwrap_or_default(), secret.unwrap_or_default());
    p.say(&format!(
        "Detected credentials key=\"{key}\" secret=\"{}\"",
        mask(&secret)
    ));

    let api_default = args.api_host.clone().or(pasted.api_server.clone());
    let api = match (&api_default, interactive) {
        (Some(a), false) => {
            normalize_url(a).with_context(|| format!("--api-host {a:?} is not an http(s) URL"))?
        }
        (None, false) => bail!("no API server: pass --api-host"),
        (d, true) => p.ask_url("API Host", d.as_deref())?,
    };
    let (_, web_guess, files_guess) = derive_hosts(&api);
    let web_default = args
        .web_host
        .clone()
        .or(pasted.web_server.clone())
        .unwrap_or(web_guess);
    let files_default = args
        .files_host
        .clone()
        .or(pasted.files_server.clone())
        .unwrap_or(files_guess);
    let (web, files) = if interactive {
        (
            p.ask_url("Web Application Host", Some(&web_default))?,
            p.ask_url("File Store Host", Some(&files_default))?,
        )
    } else {
        (web_default, files_default)
    };
    p.say(&format!(
        "\nClearML Hosts configuration:\nWeb App: {web}\nAPI: {api}\nFile Store: {files}\n"
    ));

    if !args.no_verify {
        let mut tries = 0;
        loop {
            p.say("Verifying credentials ...");
            match verify_credentials(&api, &key, &secret) {
                Ok(()) => {
                    p.say("Credentials verified!");
                    break;
                }
                Err(e) => {
                    tries += 1;
                    let first = e.to_string();
                    let first = first.lines().next().unwrap_or("");
                    p.say(&format!(
                        "Error: could not verify credentials: key={key} secret={} ({first})",
                        mask(&secret)
                    ));
                    if !interactive || tries >= 2 {
                        p.say("Exiting setup without creating configuration file");
                        return Ok(1);
                    }
                    key = p.ask("Enter user access key: ")?;
                    secret = p.ask_secret("Enter user secret: ")?;
                }
            }
        }
    }

    let default_output_uri = match (&args.default_output_uri, interactive) {
        (Some(v), _) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "n" => None,
            "server" | "s" => Some(files.clone()),
            _ => Some(v.trim().to_string()),
        },
        (None, false) => None,
        (None, true) => loop {
            let a = p.ask("Default Output URI (used to automatically store models and artifacts): (N)one/ClearML (S)erver/(C)ustom [None] ")?;
            match a.to_ascii_lowercase().as_str() {
                "" | "n" | "none" => break None,
                "s" | "server" => break Some(files.clone()),
                "c" | "custom" => {
                    let c = p.ask("Custom Default Output URI: ")?;
                    break (!c.is_empty()).then_some(c);
                }
                _ => continue,
            }
        },
    };
    p.say(&format!(
        "\nDefault Output URI: {}",
        default_output_uri.as_deref().unwrap_or("not set")
    ));

    let (git_user, git_pass) = match (&args.git_user, interactive) {
        (Some(u), _) => (
            Some(u.clone()).filter(|u| !u.is_empty()),
            args.git_pass.clone(),
        ),
        (None, false) => (None, None),
        (None, true) => {
            let u = p.ask("Enter git username for repository cloning (leave blank for SSH key authentication): [] ")?;
            if u.is_empty() {
                (None, None)
            } else {
                let pass = match &args.git_pass {
                    Some(pw) => pw.clone(),
                    None => p.ask_secret(&format!("Enter git personal token for user '{u}': "))?,
                };
                (Some(u), Some(pass))
            }
        }
    };
    if let Some(u) = &git_user {
        p.say(&format!(
            "Git repository cloning will be using user={u} token=***"
        ));
    }

    let mut extra_index_urls = args.extra_index_url.clone();
    if interactive && args.extra_index_url.is_empty() {
        let mut a = p.ask("\nEnter additional artifact repository (extra-index-url) to use when installing python packages (leave blank if not required): ")?;
        while !a.is_empty() {
            extra_index_urls.push(a);
            a =
                p.ask("Another artifact repository? (enter another url or leave blank if done): ")?;
        }
    }
    if !extra_index_urls.is_empty() {
        p.say(&format!(
            "The following artifact repositories will be added:\n\t- {}",
            extra_index_urls.join("\n\t- ")
        ));
    }

    let answers = Answers {
        api,
        web,
        files,
        access_key: key,
        secret_key: secret,
        git_user,
        git_pass,
        extra_index_urls,
        default_output_uri,
    };
    write_private(&path, &render(&answers))
        .with_context(|| format!("could not write configuration file at {}", path.display()))?;
    p.say(&format!("\nNew configuration stored in {}", path.display()));
    p.say("CLEARML-AGENT setup completed successfully.");
    Ok(0)
}

pub fn run(args: InitArgs) -> Result<i32> {
    use std::io::IsTerminal;
    let tty = io::stdin().is_terminal();
    let interactive = tty && !args.non_interactive;
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut output = io::stdout();
    let mut p = Prompter {
        input: &mut input,
        output: &mut output,
        tty,
    };
    wizard(&args, &mut p, interactive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_blocks_and_hosts() {
        let block = "api {\n  web_server: https://app.clear.ml\n  api_server: https://api.clear.ml\n  files_server: https://files.clear.ml\n  credentials {\n    \"access_key\" = \"AK\"\n    \"secret_key\"  = \"SK\"\n  }\n}\n";
        assert_eq!(
            parse_pasted(block),
            Pasted {
                access_key: Some("AK".into()),
                secret_key: Some("SK".into()),
                api_server: Some("https://api.clear.ml".into()),
                web_server: Some("https://app.clear.ml".into()),
                files_server: Some("https://files.clear.ml".into()),
            }
        );
        assert_eq!(parse_pasted("not { hocon"), Pasted::default());
        assert_eq!(
            normalize_url("localhost:8008"),
            Some("http://localhost:8008".into())
        );
        assert_eq!(
            normalize_url("app.clear.ml/"),
            Some("https://app.clear.ml".into())
        );
        assert_eq!(normalize_url("ftp://x"), None);
        assert_eq!(
            derive_hosts("http://srv:8008"),
            (
                "http://srv:8008".into(),
                "http://srv:8080".into(),
                "http://srv:8081".into()
            )
        );
        assert_eq!(
            derive_hosts("https://app.example.com"),
            (
                "https://api.example.com".into(),
                "https://app.example.com".into(),
                "https://files.example.com".into()
            )
        );
    }

    #[test]
    fn rendered_file_reads_back() {
        let a = Answers {
            api: "http://a:8008".into(),
            web: "http://a:8080".into(),
            files: "http://a:8081".into(),
            access_key: "AK".into(),
            secret_key: "S\"K".into(),
            git_user: Some("u".into()),
            git_pass: Some("p".into()),
            extra_index_urls: vec!["https://i/simple".into()],
            default_output_uri: Some("s3://b/o".into()),
        };
        let v = hocon::parse(&render(&a), &|_| None).unwrap();
        assert_eq!(v["api"]["credentials"]["secret_key"], "S\"K");
        assert_eq!(v["agent"]["git_pass"], "p");
        assert_eq!(
            v["agent"]["package_manager"]["extra_index_url"][0],
            "https://i/simple"
        );
        assert_eq!(v["sdk"]["development"]["default_output_uri"], "s3://b/o");
    }

    #[test]
    fn non_interactive_refuses_to_overwrite_and_needs_answers() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("clearml.conf");
        std::fs::write(&path, "api {}\n").unwrap();
        let args = InitArgs {
            config_file: Some(path.clone()),
            ..InitArgs::default()
        };
        let (mut input, mut output) = (io::Cursor::new(Vec::new()), Vec::new());
        let mut p = Prompter {
            input: &mut input,
            output: &mut output,
            tty: false,
        };
        let e = wizard(&args, &mut p, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "api {}\n");
        let args = InitArgs {
            force: true,
            ..args
        };
        let mut p = Prompter {
            input: &mut input,
            output: &mut output,
            tty: false,
        };
        let e = wizard(&args, &mut p, false).unwrap_err();
        assert!(e.to_string().contains("--access-key"), "{e}");
    }
}
