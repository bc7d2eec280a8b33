//! Docker arguments as ClearML users write them (`container.arguments` on a task,
//! `agent.default_docker.arguments`, `agent.extra_docker_arguments`): shell-like strings or
//! lists of `docker run` switches. Pure functions only:
//!
//! - [`tokens_from_str`] / [`tokens_from_list`]: the token list upstream works on;
//! - [`apply_filters`], [`merge`], [`expand_env_values`]: upstream's filtering rules
//!   (clearml_agent 3.0.3 `commands/worker.py` and `helper/docker_args.py`), token for token;
//! - [`mask_for_display`]: what may be printed (secret-looking `-e NAME=value`, URL passwords);
//! - [`parse`]: the tokens as the Engine API's create options ([`RunOptions`]), the way the
//!   docker CLI reads them, since we call the API instead of running the CLI.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    DeviceMapping, DeviceRequest, HostConfig, Mount, MountType, PortBinding, ResourcesUlimits,
};
use regex::Regex;

use super::DockerError;
use crate::redact::{is_secret_key, redact_urls, MASK};

/// A shell-like argument string as upstream reads it (`shlex.split`).
pub fn tokens_from_str(text: &str) -> Result<Vec<String>, DockerError> {
    shlex::split(text.trim()).ok_or_else(|| DockerError::BadArgument {
        arg: redact_urls(text),
        reason: "unbalanced quotes".into(),
    })
}

/// A list from the configuration: each item is one token, as upstream passes it to docker.
/// An item that is a switch with a space before its value (`"--network host"`, `"-e A=B"`, a
/// common slip in clearml.conf) is split at that space, which is what the user meant.
pub fn tokens_from_list(items: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for item in items {
        let t = item.trim();
        if t.is_empty() {
            continue;
        }
        match t.split_once(char::is_whitespace) {
            Some((flag, value)) if t.starts_with('-') && !flag.contains('=') => {
                out.push(flag.to_string());
                out.push(value.trim().to_string());
            }
            _ => out.push(t.to_string()),
        }
    }
    out
}

/// Upstream `DockerArgsSanitizer.get_list_of_switches`: the switch names, dashes dropped.
pub fn switches(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|t| t.trim())
        .filter(|t| t.starts_with('-'))
        .map(|t| {
            t.split('=')
                .next()
                .unwrap_or("")
                .trim_start_matches('-')
                .to_string()
        })
        .collect()
}

/// Upstream `DockerArgsSanitizer.filter_switches(args, exclude_switches=...)`: drop the named
/// switches and the value tokens that follow them. Kept token for token, quirks included (a
/// `--x=y` switch also drops the bare tokens after it), so the same arguments produce the same
/// container as with the Python agent.
pub fn drop_switches(args: &[String], exclude: &[String]) -> Vec<String> {
    let joined = args.join(" ");
    if exclude.is_empty() || !exclude.iter().any(|s| joined.contains(&format!("-{s}"))) {
        return args.to_vec();
    }
    select_switches(args, |name| !exclude.iter().any(|s| s == name))
}

/// Upstream `filter_switches(args, include_switches=...)`: only the named switches and their values.
pub fn keep_switches(args: &[String], include: &[&str]) -> Vec<String> {
    select_switches(args, |name| include.contains(&name))
}

fn select_switches(args: &[String], keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_switch_args = false;
    for token in args {
        let t = token.trim();
        if t.starts_with('-') {
            let (switch, attached) = match t.split_once('=') {
                Some((s, _)) => (s, true),
                None => (t, false),
            };
            in_switch_args = !attached;
            if keep(switch.trim_start_matches('-')) {
                out.push(token.clone());
            } else {
                in_switch_args = false;
            }
        } else if in_switch_args {
            out.push(token.clone());
        }
    }
    out
}

/// Upstream `_filter_docker_args` (`agent.docker_args_filters`, `CLEARML_AGENT_DOCKER_ARGS_FILTERS`):
/// with filters set, only tokens matching one of them are kept, each with the value token after
/// it. Applies to the task's (or the default) arguments, not to the admin's extra arguments.
pub fn apply_filters(args: &[String], filters: &[Regex]) -> Vec<String> {
    if filters.is_empty() {
        return args.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = args.iter().map(|a| a.trim().to_string()).peekable();
    while let Some(cmd) = rest.next() {
        if filters.iter().any(|f| f.is_match(&cmd)) {
            let takes_value = !cmd.contains('=');
            out.push(cmd);
            if takes_value {
                if let Some(next) = rest.next_if(|n| !n.starts_with('-')) {
                    out.push(next);
                }
            }
        }
    }
    out
}

/// How task and admin arguments combine (`agent.forbidden_docker_args`,
/// `agent.protected_docker_extra_args`, `agent.docker_args_extra_precedes_task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePolicy {
    pub forbidden: Vec<String>,
    pub protected: Vec<String>,
    pub extra_precedes_task: bool,
}

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy {
            forbidden: vec!["entrypoint".into()],
            protected: ["privileged", "security-opt", "network", "ipc"]
                .map(String::from)
                .to_vec(),
            extra_precedes_task: true,
        }
    }
}

/// The merged argument list and the forbidden switches that were stripped (to tell the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub args: Vec<String>,
    pub stripped: Vec<String>,
}

/// Upstream `DockerArgsSanitizer.merge_docker_args`: forbidden switches leave both lists; then
/// the side that precedes (the admin's extra arguments by default) comes first and its
/// protected switches (`--network`, `--ipc`, ...) are removed from the other side.
pub fn merge(policy: &MergePolicy, task: &[String], extra: &[String]) -> Merged {
    let mut stripped: Vec<String> = switches(task)
        .into_iter()
        .chain(switches(extra))
        .filter(|s| policy.forbidden.contains(s))
        .collect();
    stripped.sort();
    stripped.dedup();
    let task = drop_switches(task, &stripped);
    let extra = drop_switches(extra, &stripped);
    let (first, second) = if policy.extra_precedes_task {
        (&extra, &task)
    } else {
        (&task, &extra)
    };
    let overriding: Vec<String> = switches(first)
        .into_iter()
        .filter(|s| policy.protected.contains(s))
        .collect();
    let mut args: Vec<String> = first.iter().filter(|a| !a.is_empty()).cloned().collect();
    args.extend(
        drop_switches(second, &overriding)
            .into_iter()
            .filter(|a| !a.is_empty()),
    );
    Merged { args, stripped }
}

/// Upstream `_resolve_docker_env_args`: `$VAR` / `${VAR}` in `-e NAME=value` values expanded
/// from the agent's environment (always for the admin's extra arguments, for the task's only
/// with `agent.docker_allow_host_environ`). Unknown variables stay as written (Python's
/// `os.path.expandvars`).
pub fn expand_env_values(args: &[String], lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = args.to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == "-e" || out[i] == "--env" {
            let mut j = i + 1;
            while j < out.len() && !out[j].starts_with('-') {
                if let Some((name, value)) = out[j].split_once('=') {
                    out[j] = format!("{name}={}", expandvars(value, lookup));
                }
                j += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn expandvars(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c| !name_char(c)).unwrap_or(after.len());
            (&after[..end], end)
        };
        match (name.is_empty(), lookup(name)) {
            (false, Some(value)) => out.push_str(&value),
            _ => out.push_str(&rest[pos..pos + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// Variable names whose values are never printed (upstream's fixed list; ours adds every
/// secret-looking name, see [`is_secret_key`]).
const SECRET_ENV: [&str; 7] = [
    "CLEARML_AGENT_GIT_PASS",
    "TRAINS_AGENT_GIT_PASS",
    "CLEARML_API_SECRET_KEY",
    "TRAINS_API_SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_STORAGE_KEY",
    "CLEARML_AUTH_TOKEN",
];

/// The arguments as they may be shown (console, logs, errors): the value of every `-e NAME=value`
/// whose name looks secret (or is listed in `agent.hide_docker_command_env_vars.extra_keys` /
/// `CLEARML_AGENT_DOCKER_ARGS_HIDE_ENV`) is masked, and so is the password of every URL. Unlike
/// upstream this is always on: secrets never reach a log.
pub fn mask_for_display(args: &[String], extra_keys: &[String]) -> Vec<String> {
    let secret = |name: &str| {
        SECRET_ENV.contains(&name) || is_secret_key(name) || extra_keys.iter().any(|k| k == name)
    };
    let mask_assignment = |assignment: &str| match assignment.split_once('=') {
        Some((name, _)) if secret(name) => format!("{name}={MASK}"),
        _ => redact_urls(assignment),
    };
    let mut out = Vec::with_capacity(args.len());
    let mut env_value_next = false;
    for token in args {
        if env_value_next {
            out.push(mask_assignment(token));
            env_value_next = false;
            continue;
        }
        if token == "-e" || token == "--env" {
            env_value_next = true;
            out.push(token.clone());
        } else if let Some(v) = token.strip_prefix("--env=") {
            out.push(format!("--env={}", mask_assignment(v)));
        } else if let Some(v) = token.strip_prefix("-e").filter(|v| !v.is_empty()) {
            let v = v.strip_prefix('=').unwrap_or(v);
            out.push(format!("-e{}", mask_assignment(v)));
        } else {
            out.push(redact_urls(token));
        }
    }
    out
}

/// Everything `docker run` switches can ask of the Engine API's create call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// `-e`: in order, a later value for the same name wins.
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub hostname: Option<String>,
    pub exposed_ports: Vec<String>,
    pub stop_signal: Option<String>,
    pub host: HostConfig,
    /// Switches that were read but have no effect here, each with why (printed as a warning).
    pub ignored: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Flag,
    Value,
}

/// The switches we map, by long name, with their short forms.
const KNOWN: &[(&str, Option<char>, Arity)] = &[
    ("env", Some('e'), Arity::Value),
    ("volume", Some('v'), Arity::Value),
    ("mount", None, Arity::Value),
    ("network", None, Arity::Value),
    ("net", None, Arity::Value),
    ("ipc", None, Arity::Value),
    ("pid", None, Arity::Value),
    ("uts", None, Arity::Value),
    ("userns", None, Arity::Value),
    ("shm-size", None, Arity::Value),
    ("publish", Some('p'), Arity::Value),
    ("publish-all", Some('P'), Arity::Flag),
    ("expose", None, Arity::Value),
    ("privileged", None, Arity::Flag),
    ("device", None, Arity::Value),
    ("gpus", None, Arity::Value),
    ("user", Some('u'), Arity::Value),
    ("label", Some('l'), Arity::Value),
    ("workdir", Some('w'), Arity::Value),
    ("entrypoint", None, Arity::Value),
    ("security-opt", None, Arity::Value),
    ("cap-add", None, Arity::Value),
    ("cap-drop", None, Arity::Value),
    ("ulimit", None, Arity::Value),
    ("add-host", None, Arity::Value),
    ("dns", None, Arity::Value),
    ("dns-search", None, Arity::Value),
    ("dns-option", None, Arity::Value),
    ("hostname", Some('h'), Arity::Value),
    ("runtime", None, Arity::Value),
    ("memory", Some('m'), Arity::Value),
    ("memory-swap", None, Arity::Value),
    ("cpus", None, Arity::Value),
    ("cpuset-cpus", None, Arity::Value),
    ("cpu-shares", Some('c'), Arity::Value),
    ("pids-limit", None, Arity::Value),
    ("group-add", None, Arity::Value),
    ("tmpfs", None, Arity::Value),
    ("sysctl", None, Arity::Value),
    ("init", None, Arity::Flag),
    ("read-only", None, Arity::Flag),
    ("oom-kill-disable", None, Arity::Flag),
    ("stop-signal", None, Arity::Value),
    ("log-driver", None, Arity::Value),
    ("log-opt", None, Arity::Value),
    // Read and ignored: the agent owns the container's name, lifetime and terminal.
    ("name", None, Arity::Value),
    ("restart", None, Arity::Value),
    ("rm", None, Arity::Flag),
    ("detach", Some('d'), Arity::Flag),
    ("tty", Some('t'), Arity::Flag),
    ("interactive", Some('i'), Arity::Flag),
    ("env-file", None, Arity::Value),
    ("platform", None, Arity::Value),
];

fn by_short(c: char) -> Option<(&'static str, Arity)> {
    KNOWN
        .iter()
        .find(|(_, s, _)| *s == Some(c))
        .map(|(l, _, a)| (*l, *a))
}

fn by_long(name: &str) -> Option<(&'static str, Arity)> {
    KNOWN
        .iter()
        .find(|(l, _, _)| *l == name)
        .map(|(l, _, a)| (*l, *a))
}

/// Read `docker run` switches into create options, the way the docker CLI does: `--x=v`,
/// `--x v`, `-x v`, `-xv`, `-x=v`, combined short flags (`-it`), the last value of a scalar
/// switch wins. `-e NAME` without a value takes the agent's `NAME` (dropped when unset), as
/// the CLI does. Unknown switches are kept out with a warning in [`RunOptions::ignored`] (the
/// bare tokens after one are taken as its value, as upstream's filters do); a known switch
/// with a bad value is an error naming it.
pub fn parse(
    args: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<RunOptions, DockerError> {
    let mut opts = RunOptions::default();
    let mut i = 0;
    while i < args.len() {
        let token = args[i].trim();
        i += 1;
        if token.is_empty() {
            continue;
        }
        let (name, arity, attached) = if let Some(long) = token.strip_prefix("--") {
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match by_long(n) {
                Some((n, a)) => (n, a, v),
                None => {
                    let mut shown = token.to_string();
                    if v.is_none() {
                        while i < args.len() && !args[i].trim().starts_with('-') {
                            shown.push(' ');
                            shown.push_str(args[i].trim());
                            i += 1;
                        }
                    }
                    opts.ignored.push(format!(
                        "{} (not a docker run switch the agent maps)",
                        mask_for_display(&[shown], &[]).join(" ")
                    ));
                    continue;
                }
            }
        } else if let Some(short) = token.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let first = chars.next().unwrap_or('-');
            match by_short(first) {
                Some((n, Arity::Value)) => {
                    let rest = chars.as_str();
                    let v = (!rest.is_empty())
                        .then(|| rest.strip_prefix('=').unwrap_or(rest).to_string());
                    (n, Arity::Value, v)
                }
                Some((_, Arity::Flag)) => {
                    // Combined flags (`-it`): each must be a known flag.
                    for c in short.chars() {
                        match by_short(c) {
                            Some((n, Arity::Flag)) => set_flag(&mut opts, n, true),
                            _ => {
                                return Err(DockerError::BadArgument {
                                    arg: token.to_string(),
                                    reason: format!("unknown short switch -{c}"),
                                })
                            }
                        }
                    }
                    continue;
                }
                None => {
                    opts.ignored.push(format!(
                        "{} (not a docker run switch the agent maps)",
                        mask_for_display(&[token.to_string()], &[]).join(" ")
                    ));
                    continue;
                }
            }
        } else {
            opts.ignored
                .push(format!("{} (a value without a switch)", redact_urls(token)));
            continue;
        };
        match arity {
            Arity::Flag => {
                let on = match attached.as_deref() {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(other) => {
                        return Err(DockerError::BadArgument {
                            arg: token.to_string(),
                            reason: format!("--{name} takes true or false, not {other:?}"),
                        })
                    }
                };
                set_flag(&mut opts, name, on);
            }
            Arity::Value => {
                let value = match attached {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => {
                        return Err(DockerError::BadArgument {
                            arg: token.to_string(),
                            reason: "a value is missing".into(),
                        })
                    }
                };
                set_value(&mut opts, name, &value, lookup).map_err(|reason| {
                    DockerError::BadArgument {
                        arg: mask_for_display(&[format!("--{name}"), value.clone()], &[]).join(" "),
                        reason: redact_urls(&reason),
                    }
                })?;
            }
        }
    }
    Ok(opts)
}

fn set_flag(opts: &mut RunOptions, name: &str, on: bool) {
    let h = &mut opts.host;
    match name {
        "publish-all" => h.publish_all_ports = Some(on),
        "privileged" => h.privileged = Some(on),
        "init" => h.init = Some(on),
        "read-only" => h.readonly_rootfs = Some(on),
        "oom-kill-disable" => h.oom_kill_disable = Some(on),
        other => opts.ignored.push(format!(
            "--{other} (the agent manages the container's lifetime and terminal)"
        )),
    }
}

fn set_value(
    opts: &mut RunOptions,
    name: &str,
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let h = &mut opts.host;
    let push = |list: &mut Option<Vec<String>>, v: &str| {
        list.get_or_insert_with(Vec::new).push(v.to_string())
    };
    match name {
        "env" => match value.split_once('=') {
            Some((n, v)) if !n.is_empty() => opts.env.push((n.to_string(), v.to_string())),
            Some(_) => return Err("an environment variable needs a name".into()),
            None => {
                if let Some(v) = lookup(value) {
                    opts.env.push((value.to_string(), v));
                }
            }
        },
        "volume" => {
            let parts: Vec<&str> = value.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 || parts[1].is_empty() {
                // An anonymous volume (`-v /data`) is an image volume, not a mount.
                if parts.len() == 1 && parts[0].starts_with('/') {
                    opts.ignored.push(format!(
                        "-v {value} (anonymous volumes are not created by the agent)"
                    ));
                    return Ok(());
                }
                return Err("expected SOURCE:TARGET[:OPTIONS]".into());
            }
            if !parts[1].starts_with('/') {
                return Err(format!("the target {} is not an absolute path", parts[1]));
            }
            push(&mut h.binds, value);
        }
        "mount" => h
            .mounts
            .get_or_insert_with(Vec::new)
            .push(parse_mount(value)?),
        "network" | "net" => h.network_mode = Some(value.to_string()),
        "ipc" => h.ipc_mode = Some(value.to_string()),
        "pid" => h.pid_mode = Some(value.to_string()),
        "uts" => h.uts_mode = Some(value.to_string()),
        "userns" => h.userns_mode = Some(value.to_string()),
        "shm-size" => h.shm_size = Some(parse_bytes(value)?),
        "memory" => h.memory = Some(parse_bytes(value)?),
        "memory-swap" => {
            h.memory_swap = Some(if value == "-1" {
                -1
            } else {
                parse_bytes(value)?
            })
        }
        "cpus" => {
            let cpus: f64 = value
                .parse()
                .map_err(|_| format!("{value:?} is not a number of CPUs"))?;
            h.nano_cpus = Some((cpus * 1e9) as i64);
        }
        "cpuset-cpus" => h.cpuset_cpus = Some(value.to_string()),
        "cpu-shares" => h.cpu_shares = Some(parse_int(value)?),
        "pids-limit" => h.pids_limit = Some(parse_int(value)?),
        "publish" => {
            let (exposed, bindings) = parse_publish(value)?;
            let map = h.port_bindings.get_or_insert_with(HashMap::new);
            for (port, binding) in bindings {
                let entry = map.entry(port).or_insert_with(|| Some(Vec::new()));
                if let (Some(list), Some(b)) = (entry.as_mut(), binding) {
                    list.push(b);
                }
            }
            for e in exposed {
                if !opts.exposed_ports.contains(&e) {
                    opts.exposed_ports.push(e);
                }
            }
        }
        "expose" => {
            let port = if value.contains('/') {
                value.to_string()
            } else {
                format!("{value}/tcp")
            };
            if !opts.exposed_ports.contains(&port) {
                opts.exposed_ports.push(port);
            }
        }
        "device" => {
            let parts: Vec<&str> = value.split(':').collect();
            let (host_path, container_path, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] if c.chars().all(|ch| "rwm".contains(ch)) => (*h, *h, *c),
                [h, c] => (*h, *c, "rwm"),
                [h, c, p] => (*h, *c, *p),
                _ => return Err("expected HOST[:CONTAINER[:PERMISSIONS]]".into()),
            };
            h.devices.get_or_insert_with(Vec::new).push(DeviceMapping {
                path_on_host: Some(host_path.to_string()),
                path_in_container: Some(container_path.to_string()),
                cgroup_permissions: Some(perms.to_string()),
            });
        }
        "gpus" => h
            .device_requests
            .get_or_insert_with(Vec::new)
            .push(parse_gpus(value)?),
        "user" => opts.user = Some(value.to_string()),
        "label" => {
            let (k, v) = value.split_once('=').unwrap_or((value, ""));
            opts.labels.insert(k.to_string(), v.to_string());
        }
        "workdir" => opts.workdir = Some(value.to_string()),
        // The CLI's --entrypoint is one program, never split.
        "entrypoint" => {
            opts.entrypoint = Some(if value.is_empty() {
                vec![]
            } else {
                vec![value.to_string()]
            })
        }
        "hostname" => opts.hostname = Some(value.to_string()),
        "stop-signal" => opts.stop_signal = Some(value.to_string()),
        "security-opt" => push(&mut h.security_opt, value),
        "cap-add" => push(&mut h.cap_add, value),
        "cap-drop" => push(&mut h.cap_drop, value),
        "add-host" => push(&mut h.extra_hosts, value),
        "dns" => push(&mut h.dns, value),
        "dns-search" => push(&mut h.dns_search, value),
        "dns-option" => push(&mut h.dns_options, value),
        "group-add" => push(&mut h.group_add, value),
        "runtime" => h.runtime = Some(value.to_string()),
        "ulimit" => {
            let (n, limits) = value.split_once('=').ok_or("expected NAME=SOFT[:HARD]")?;
            let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
            h.ulimits
                .get_or_insert_with(Vec::new)
                .push(ResourcesUlimits {
                    name: Some(n.to_string()),
                    soft: Some(parse_int(soft)?),
                    hard: Some(parse_int(hard)?),
                });
        }
        "tmpfs" => {
            let (path, options) = value.split_once(':').unwrap_or((value, ""));
            h.tmpfs
                .get_or_insert_with(HashMap::new)
                .insert(path.to_string(), options.to_string());
        }
        "sysctl" => {
            let (k, v) = value.split_once('=').ok_or("expected NAME=VALUE")?;
            h.sysctls
                .get_or_insert_with(HashMap::new)
                .insert(k.to_string(), v.to_string());
        }
        "log-driver" => {
            h.log_config.get_or_insert_with(Default::default).typ = Some(value.to_string())
        }
        "log-opt" => {
            let (k, v) = value.split_once('=').ok_or("expected KEY=VALUE")?;
            h.log_config
                .get_or_insert_with(Default::default)
                .config
                .get_or_insert_with(HashMap::new)
                .insert(k.to_string(), v.to_string());
        }
        other => opts.ignored.push(format!(
            "--{other} {} (the agent sets this itself)",
            mask_for_display(&[value.to_string()], &[]).join(" ")
        )),
    }
    Ok(())
}

fn parse_int(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))
}

/// docker's `RAMInBytes`: a number with an optional binary unit (b, k, m, g, t, p; `kb`, `MiB`...).
pub fn parse_bytes(value: &str) -> Result<i64, String> {
    let v = value.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let number: f64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a size"))?;
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(format!("{value:?} has an unknown unit")),
    };
    Ok((number * scale) as i64)
}

fn parse_mount(value: &str) -> Result<Mount, String> {
    let mut m = Mount {
        typ: Some(MountType::VOLUME),
        ..Default::default()
    };
    for field in value.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, "true"));
        match k {
            "type" => {
                m.typ = Some(match v {
                    "bind" => MountType::BIND,
                    "volume" => MountType::VOLUME,
                    "tmpfs" => MountType::TMPFS,
                    other => return Err(format!("mount type {other:?} is not supported")),
                })
            }
            "source" | "src" => m.source = Some(v.to_string()),
            "target" | "dst" | "destination" => m.target = Some(v.to_string()),
            "readonly" | "ro" => m.read_only = Some(v != "false" && v != "0"),
            _ => {}
        }
    }
    if m.target.is_none() {
        return Err("a mount needs a target".into());
    }
    Ok(m)
}

type PortBindings = Vec<(String, Option<PortBinding>)>;

/// `-p [IP:][HOST:]CONTAINER[/PROTO]`, ports or equal-length ranges.
fn parse_publish(value: &str) -> Result<(Vec<String>, PortBindings), String> {
    let (spec, proto) = value.rsplit_once('/').unwrap_or((value, "tcp"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => ("", "", *c),
        [h, c] => ("", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => return Err("expected [IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]".into()),
    };
    let range = |r: &str| -> Result<Vec<u16>, String> {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let a: u16 = a.parse().map_err(|_| format!("{r:?} is not a port"))?;
        let b: u16 = b.parse().map_err(|_| format!("{r:?} is not a port"))?;
        if b < a {
            return Err(format!("{r:?} is an empty range"));
        }
        Ok((a..=b).collect())
    };
    let containers = range(container)?;
    let hosts = if host.is_empty() {
        vec![]
    } else {
        range(host)?
    };
    if !hosts.is_empty() && hosts.len() != containers.len() {
        return Err("host and container port ranges differ in length".into());
    }
    let mut exposed = Vec::new();
    let mut bindings = Vec::new();
    for (k, c) in containers.iter().enumerate() {
        let port = format!("{c}/{proto}");
        exposed.push(port.clone());
        bindings.push((
            port,
            Some(PortBinding {
                host_ip: (!ip.is_empty()).then(|| ip.to_string()),
                host_port: hosts.get(k).map(|h| h.to_string()),
            }),
        ));
    }
    Ok((exposed, bindings))
}

/// `--gpus` as the docker CLI reads it: `all`, a count, `device=0,1` (usually quoted:
/// `"device=0,1"`), `count=N`, `driver=...`, `capabilities=...`.
pub fn parse_gpus(value: &str) -> Result<DeviceRequest, String> {
    let mut req = DeviceRequest {
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    };
    let v = value.trim().trim_matches(|c| c == '\'' || c == '"');
    if v.is_empty() {
        return Err("an empty --gpus value".into());
    }
    // A quoted `device=0,1` is one field; otherwise fields are comma separated.
    let fields: Vec<&str> = if v.starts_with("device=") && !v.contains("count=") {
        vec![v]
    } else {
        v.split(',').collect()
    };
    for field in fields {
        match field.split_once('=') {
            None if field == "all" => req.count = Some(-1),
            None => {
                req.count = Some(
                    field
                        .parse()
                        .map_err(|_| format!("{field:?} is not a GPU count"))?,
                )
            }
            Some(("count", "all")) => req.count = Some(-1),
            Some(("count", n)) => {
                req.count = Some(n.parse().map_err(|_| format!("{n:?} is not a GPU count"))?)
            }
            Some(("device", ids)) => {
                req.device_ids = Some(ids.split(',').map(|d| d.trim().replace('.', ":")).collect())
            }
            Some(("driver", d)) => req.driver = Some(d.to_string()),
            Some(("capabilities", caps)) => {
                if let Some(all) = req.capabilities.as_mut().and_then(|c| c.first_mut()) {
                    all.extend(caps.split(',').map(str::to_string));
                }
            }
            Some((k, _)) => return Err(format!("unknown --gpus field {k:?}")),
        }
    }
    Ok(req)
}

/// The GPUs the agent itself gives a task (the daemon's `--gpus`, `NVIDIA_VISIBLE_DEVICES`):
/// `all` (or unset) -> every GPU, `none`/empty -> no request, `0,1` -> those devices
/// (`.` in a MIG id becomes `:`, as upstream does).
pub fn gpus_for_visible_devices(visible: Option<&str>) -> Option<DeviceRequest> {
    let v = visible.map(str::trim).unwrap_or("all");
    match v.to_ascii_lowercase().as_str() {
        "none" | "" | "void" => None,
        "all" => parse_gpus("all").ok(),
        _ => parse_gpus(&format!("device={v}")).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn strings_split_like_a_shell_and_lists_keep_tokens() {
        assert_eq!(
            tokens_from_str(r#"-e "A=b c" --ipc=host -v '/x y:/z'"#).unwrap(),
            t(&["-e", "A=b c", "--ipc=host", "-v", "/x y:/z"])
        );
        assert!(tokens_from_str("-e 'A=b").is_err());
        assert_eq!(
            tokens_from_list(&t(&["--network host", "-e", "A=1", "--ipc=host", " "])),
            t(&["--network", "host", "-e", "A=1", "--ipc=host"])
        );
    }

    #[test]
    fn filters_keep_only_matching_switches_with_their_values() {
        let f = [Regex::new("^--env$").unwrap(), Regex::new("^-e$").unwrap()];
        let args = t(&[
            "-v",
            "/a:/b",
            "-e",
            "X=1",
            "--privileged",
            "--env",
            "Y=2",
            "--network=host",
        ]);
        assert_eq!(apply_filters(&args, &f), t(&["-e", "X=1", "--env", "Y=2"]));
        assert_eq!(apply_filters(&args, &[]), args);
    }

    #[test]
    fn forbidden_switches_leave_both_sides_and_are_reported() {
        let policy = MergePolicy::default();
        let task = t(&["--entrypoint", "/bin/evil", "-e", "A=1"]);
        let extra = t(&["--entrypoint=/x", "--ipc=host"]);
        let m = merge(&policy, &task, &extra);
        assert_eq!(m.stripped, t(&["entrypoint"]));
        assert_eq!(m.args, t(&["--ipc=host", "-e", "A=1"]));
    }

    #[test]
    fn protected_extra_switches_override_the_task() {
        let policy = MergePolicy::default();
        let task = t(&["--network", "bridge", "-e", "A=1", "--ipc", "private"]);
        let extra = t(&["--network=host", "-e", "B=2"]);
        let m = merge(&policy, &task, &extra);
        // extra first; the task's --network goes, its --ipc stays (extra has none), -e is not protected.
        assert_eq!(
            m.args,
            t(&[
                "--network=host",
                "-e",
                "B=2",
                "-e",
                "A=1",
                "--ipc",
                "private"
            ])
        );
        let task_first = MergePolicy {
            extra_precedes_task: false,
            ..MergePolicy::default()
        };
        let m = merge(&task_first, &task, &extra);
        assert_eq!(
            m.args,
            t(&[
                "--network",
                "bridge",
                "-e",
                "A=1",
                "--ipc",
                "private",
                "-e",
                "B=2"
            ])
        );
    }

    #[test]
    fn env_values_expand_from_the_host_only_after_e() {
        let lookup = |n: &str| (n == "HOME_DIR").then(|| "/home/u".to_string());
        let args = t(&[
            "-e",
            "P=$HOME_DIR/x",
            "Q=${HOME_DIR}",
            "R=$NOPE",
            "-v",
            "$HOME_DIR:/h",
        ]);
        assert_eq!(
            expand_env_values(&args, &lookup),
            t(&[
                "-e",
                "P=/home/u/x",
                "Q=/home/u",
                "R=$NOPE",
                "-v",
                "$HOME_DIR:/h"
            ])
        );
    }

    #[test]
    fn secrets_are_masked_in_every_env_form_and_url() {
        let args = t(&[
            "-e",
            "CLEARML_API_SECRET_KEY=s3cr3t",
            "--env=GITHUB_TOKEN=tok",
            "-eAWS_SECRET_ACCESS_KEY=aws",
            "-e",
            "MY_VAR=https://u:pw@host/x",
            "-e",
            "CUSTOM=c",
            "-e",
            "PLAIN=ok",
            "-v",
            "/a:/b",
        ]);
        let shown = mask_for_display(&args, &t(&["CUSTOM"])).join(" ");
        for secret in ["s3cr3t", "tok", "aws", ":pw@", "=c "] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("PLAIN=ok")
                && shown.contains("/a:/b")
                && shown.contains("u:********@host")
        );
    }

    #[test]
    fn run_switches_become_create_options() {
        let args = tokens_from_str(
            "-e A=1 --env=B=2 -eC=3 -e FROM_HOST -e UNSET -v /data:/data:ro --volume=/x:/y \
             --network host --ipc=host --shm-size=8g -p 8080:80 -p 127.0.0.1:9000-9001:90-91/udp \
             --privileged --device /dev/fuse --gpus all -u 1000:1000 -l team=ml -w /work \
             --security-opt seccomp=unconfined --cap-add SYS_PTRACE --ulimit nofile=1024:2048 \
             --cpus 1.5 -m 512m --init -it --rm --name x --tmpfs /scratch:size=1g",
        )
        .unwrap();
        let lookup = |n: &str| (n == "FROM_HOST").then(|| "h".to_string());
        let o = parse(&args, &lookup).unwrap();
        assert_eq!(
            o.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into()),
                ("FROM_HOST".into(), "h".into())
            ]
        );
        let h = &o.host;
        assert_eq!(h.binds, Some(t(&["/data:/data:ro", "/x:/y"])));
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(h.ipc_mode.as_deref(), Some("host"));
        assert_eq!(h.shm_size, Some(8 * 1024 * 1024 * 1024));
        assert_eq!(h.memory, Some(512 * 1024 * 1024));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.init, Some(true));
        let ports = h.port_bindings.as_ref().unwrap();
        assert_eq!(
            ports["80/tcp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some("8080".into())
            }])
        );
        assert_eq!(
            ports["91/udp"],
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("9001".into())
            }])
        );
        assert_eq!(o.exposed_ports, t(&["80/tcp", "90/udp", "91/udp"]));
        let dev = &h.devices.as_ref().unwrap()[0];
        assert_eq!(dev.path_in_container.as_deref(), Some("/dev/fuse"));
        let gpu = &h.device_requests.as_ref().unwrap()[0];
        assert_eq!(gpu.count, Some(-1));
        assert_eq!(gpu.capabilities, Some(vec![t(&["gpu"])]));
        assert_eq!(o.user.as_deref(), Some("1000:1000"));
        assert_eq!(o.labels.get("team").map(String::as_str), Some("ml"));
        assert_eq!(o.workdir.as_deref(), Some("/work"));
        assert_eq!(h.security_opt, Some(t(&["seccomp=unconfined"])));
        assert_eq!(h.cap_add, Some(t(&["SYS_PTRACE"])));
        let ul = &h.ulimits.as_ref().unwrap()[0];
        assert_eq!((ul.soft, ul.hard), (Some(1024), Some(2048)));
        assert_eq!(h.tmpfs.as_ref().unwrap()["/scratch"], "size=1g");
        // -i, -t, --rm, --name are read and reported as ignored.
        assert_eq!(o.ignored.len(), 4, "{:?}", o.ignored);
    }

    #[test]
    fn gpu_requests_match_the_cli() {
        let d = parse_gpus("\"device=0,1\"").unwrap();
        assert_eq!(d.device_ids, Some(t(&["0", "1"])));
        assert_eq!(d.count, None);
        assert_eq!(parse_gpus("2").unwrap().count, Some(2));
        let c = parse_gpus("count=1,capabilities=utility").unwrap();
        assert_eq!(c.capabilities, Some(vec![t(&["gpu", "utility"])]));
        assert!(parse_gpus("bogus=1").is_err());
        assert_eq!(gpus_for_visible_devices(None).unwrap().count, Some(-1));
        assert!(gpus_for_visible_devices(Some("none")).is_none());
        assert_eq!(
            gpus_for_visible_devices(Some("0.1,2")).unwrap().device_ids,
            Some(t(&["0:1", "2"]))
        );
    }

    #[test]
    fn bad_values_name_the_switch_and_unknown_switches_are_reported() {
        let err = parse(&t(&["--shm-size", "lots"]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--shm-size lots"), "{err}");
        let err = parse(&t(&["-e"]), &no_env).unwrap_err().to_string();
        assert!(err.contains("-e") && err.contains("missing"), "{err}");
        let err = parse(&t(&["-v", "relative"]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("relative"), "{err}");
        let o = parse(&t(&["--frobnicate", "x", "y", "-e", "A=1"]), &no_env).unwrap();
        assert_eq!(o.env, vec![("A".into(), "1".into())]);
        assert_eq!(o.ignored.len(), 1);
        assert!(
            o.ignored[0].starts_with("--frobnicate x y"),
            "{:?}",
            o.ignored
        );
        // A secret in a bad or unknown argument is masked in the message.
        let err = parse(&t(&["--cpus", "https://u:pw@h/"]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw@"), "{err}");
    }

    #[test]
    fn sizes_follow_docker_units() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2k").unwrap(), 2048);
        assert!(parse_bytes("12x").is_err());
    }
}
