//! Which image a task runs in, with which arguments (upstream's rules, clearml_agent 3.0.3
//! `get_docker_config_cmd` and `run_one_task`), and image reference parsing.

use super::args::{tokens_from_list, tokens_from_str};
use super::DockerError;

/// Upstream's image when nothing else names one.
pub const FALLBACK_IMAGE: &str = "nvidia/cuda";

/// Arguments as configuration holds them: one shell-like string or a list of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsValue {
    Text(String),
    List(Vec<String>),
}

impl ArgsValue {
    pub fn tokens(&self) -> Result<Vec<String>, DockerError> {
        match self {
            ArgsValue::Text(t) => tokens_from_str(t),
            ArgsValue::List(l) => Ok(tokens_from_list(l)),
        }
    }
}

/// The agent's default container: what a task without its own image runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultDocker {
    pub image: String,
    pub args: Vec<String>,
    /// Set on the command line (`--docker IMAGE ...`), which upstream also uses to skip the
    /// default-container match rules.
    pub from_command_line: bool,
}

/// The agent's default container from, in order: `daemon --docker IMAGE [ARGS...]`,
/// `CLEARML_DOCKER_IMAGE`, `agent.default_docker.image`, `nvidia/cuda`. The image string may
/// carry arguments after a space (`"img --ipc=host"`); otherwise the command line's arguments,
/// else `agent.default_docker.arguments`.
pub fn agent_default(
    command_line: &[String],
    env_image: Option<&str>,
    conf_image: Option<&str>,
    conf_args: Option<&ArgsValue>,
) -> Result<DefaultDocker, DockerError> {
    let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    let from_command_line = command_line.first().is_some_and(|s| !s.trim().is_empty());
    let image_text = if from_command_line {
        command_line[0].trim().to_string()
    } else {
        nonempty(env_image)
            .or_else(|| nonempty(conf_image))
            .unwrap_or_else(|| FALLBACK_IMAGE.to_string())
    };
    let mut words = tokens_from_str(&image_text)?;
    let image = if words.is_empty() {
        FALLBACK_IMAGE.to_string()
    } else {
        words.remove(0)
    };
    let args = if !words.is_empty() {
        words
    } else if from_command_line && command_line.len() > 1 {
        tokens_from_list(&command_line[1..])
    } else {
        match conf_args {
            Some(a) => a.tokens()?,
            None => vec![],
        }
    };
    Ok(DefaultDocker {
        image,
        args,
        from_command_line,
    })
}

/// The task's `container` section as the SDK and the UI write it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskContainer {
    pub image: Option<String>,
    pub arguments: Option<String>,
    pub setup_shell_script: Option<String>,
}

/// What a task runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub image: String,
    pub args: Vec<String>,
    /// The task's own image, as opposed to the agent's default.
    pub from_task: bool,
    pub setup_shell_script: Option<String>,
}

/// The task's image and arguments when it names an image (unless
/// `agent.disable_task_docker_override`), else the agent's default image *and* arguments; the
/// task's setup script either way. A task's arguments never mix with the default ones (the
/// admin's `extra_docker_arguments` are merged later, see [`super::args::merge`]).
pub fn for_task(
    default: &DefaultDocker,
    task: &TaskContainer,
    disable_task_override: bool,
) -> Result<Choice, DockerError> {
    let task_image = task
        .image
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let setup_shell_script = task
        .setup_shell_script
        .clone()
        .filter(|s| !s.trim().is_empty());
    Ok(match task_image {
        Some(image) if !disable_task_override => Choice {
            image: image.to_string(),
            args: match task.arguments.as_deref() {
                Some(a) => tokens_from_str(a)?,
                None => vec![],
            },
            from_task: true,
            setup_shell_script,
        },
        _ => Choice {
            image: default.image.clone(),
            args: default.args.clone(),
            from_task: false,
            setup_shell_script,
        },
    })
}

/// `repo[:tag]` or `repo@digest` -> (repo, tag or digest). A port in the registry host is not a
/// tag (`127.0.0.1:5000/x` has none); no tag means `latest`.
pub fn split_reference(image: &str) -> (String, String) {
    let image = image.trim();
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last_slash = image.rfind('/').map(|p| p + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (image[..at].to_string(), image[at + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("ubuntu"),
            ("ubuntu".into(), "latest".into())
        );
        assert_eq!(
            split_reference("nvidia/cuda:12.1-runtime"),
            ("nvidia/cuda".into(), "12.1-runtime".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/x/y"),
            ("127.0.0.1:5000/x/y".into(), "latest".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/x:2"),
            ("127.0.0.1:5000/x".into(), "2".into())
        );
        assert_eq!(
            split_reference("a/b@sha256:abc"),
            ("a/b".into(), "sha256:abc".into())
        );
    }

    #[test]
    fn default_image_precedence() {
        let conf_args = ArgsValue::Text("--ipc=host -e A=1".into());
        let d = agent_default(&[], Some("env/img"), Some("conf/img"), Some(&conf_args)).unwrap();
        assert_eq!(d.image, "env/img");
        assert_eq!(d.args, s(&["--ipc=host", "-e", "A=1"]));
        assert!(!d.from_command_line);
        let d = agent_default(&[], None, Some("conf/img"), None).unwrap();
        assert_eq!((d.image.as_str(), d.args.len()), ("conf/img", 0));
        let d = agent_default(&[], None, None, None).unwrap();
        assert_eq!(d.image, FALLBACK_IMAGE);
        let d = agent_default(
            &s(&["cli/img", "--network", "host"]),
            Some("env/img"),
            None,
            Some(&conf_args),
        )
        .unwrap();
        assert_eq!(d.image, "cli/img");
        assert_eq!(d.args, s(&["--network", "host"]));
        assert!(d.from_command_line);
        let d = agent_default(&s(&["cli/img --privileged"]), None, None, Some(&conf_args)).unwrap();
        assert_eq!(
            (d.image.as_str(), d.args.clone()),
            ("cli/img", s(&["--privileged"]))
        );
        let d = agent_default(&s(&["cli/img"]), None, None, Some(&conf_args)).unwrap();
        assert_eq!(d.args, s(&["--ipc=host", "-e", "A=1"]));
    }

    #[test]
    fn the_task_image_wins_unless_overrides_are_disabled() {
        let default = DefaultDocker {
            image: "default/img".into(),
            args: s(&["--ipc=host"]),
            from_command_line: false,
        };
        let task = TaskContainer {
            image: Some(" task/img:1 ".into()),
            arguments: Some("-e X='a b'".into()),
            setup_shell_script: Some("apt-get install -y foo\n".into()),
        };
        let c = for_task(&default, &task, false).unwrap();
        assert_eq!(c.image, "task/img:1");
        assert_eq!(c.args, s(&["-e", "X=a b"]));
        assert!(c.from_task);
        assert!(c.setup_shell_script.is_some());
        let c = for_task(&default, &task, true).unwrap();
        assert_eq!(
            (c.image.as_str(), c.args.clone(), c.from_task),
            ("default/img", s(&["--ipc=host"]), false)
        );
        assert!(
            c.setup_shell_script.is_some(),
            "the setup script runs in the default image too"
        );
        let no_image = TaskContainer {
            arguments: Some("--privileged".into()),
            ..TaskContainer::default()
        };
        let c = for_task(&default, &no_image, false).unwrap();
        assert_eq!(
            c.args,
            s(&["--ipc=host"]),
            "a task without an image gets the default arguments"
        );
        let bad = TaskContainer {
            image: Some("x".into()),
            arguments: Some("-e 'oops".into()),
            ..TaskContainer::default()
        };
        assert!(for_task(&default, &bad, false).is_err());
    }
}
