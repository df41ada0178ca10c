//! Reading configuration files: the only I/O in `config`.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Accounts, Config, ConfigErrors, Environment, Problem, validate};

/// One configuration file's path and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The texts validation works on: the agent file and every policy file.
#[derive(Debug, Clone)]
pub struct Sources {
    pub agent: SourceFile,
    pub policies: Vec<SourceFile>,
}

/// Reads and validates the agent file alone, without its policies.
pub fn load_agent_file(
    agent_file: &Path,
    env: &dyn Environment,
    accounts: &dyn Accounts,
) -> Result<super::AgentFile, ConfigErrors> {
    let agent = read_agent_file(agent_file).map_err(|p| ConfigErrors(vec![p]))?;
    validate::agent_file(&agent, env, accounts)
}

/// Reads and validates the configuration rooted at `agent_file`.
pub fn load(agent_file: &Path, env: &dyn Environment, accounts: &dyn Accounts) -> Result<Config, ConfigErrors> {
    let sources = read_sources(agent_file, env, accounts)?;
    validate(&sources, env, accounts)
}

/// What `keyturn validate` reads: the agent file (or, when `agent_optional` and there is none,
/// an empty one: every default, no stores), and the policies of `policies` or else of the
/// agent file's `policies` directory.
pub fn read_for_check(
    agent_file: &Path,
    policies: Option<&Path>,
    agent_optional: bool,
    env: &dyn Environment,
    accounts: &dyn Accounts,
) -> Result<Sources, ConfigErrors> {
    let Some(dir) = policies else { return read_sources(agent_file, env, accounts) };
    let agent = match read_agent_file(agent_file) {
        Ok(agent) => agent,
        Err(_) if agent_optional && !agent_file.exists() => {
            SourceFile { path: PathBuf::from("(no agent file; stores from --store)"), text: String::new() }
        }
        Err(problem) => return Err(ConfigErrors(vec![problem])),
    };
    let policies = read_policy_dir(dir, &agent.path)?;
    Ok(Sources { agent, policies })
}

/// Reads the agent file, finds its policy directory, and reads every `*.toml` in it.
pub fn read_sources(
    agent_file: &Path,
    env: &dyn Environment,
    accounts: &dyn Accounts,
) -> Result<Sources, ConfigErrors> {
    let agent = read_agent_file(agent_file).map_err(|p| ConfigErrors(vec![p]))?;
    let Some(dir) = validate::policies_dir(&agent, env) else {
        // The policy directory itself is unreadable: report the agent file's problems.
        return Err(validate::agent_file(&agent, env, accounts).err().unwrap_or_else(|| ConfigErrors(Vec::new())));
    };
    let policies = read_policy_dir(&dir, &agent.path)?;
    Ok(Sources { agent, policies })
}

fn read_file(path: &Path) -> Result<SourceFile, Problem> {
    read_text(path).map(|text| SourceFile { path: path.to_path_buf(), text }).map_err(|e| Problem {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
        skipped: false,
    })
}

/// A file's text, read without asking its size first (`fs::read_to_string` does, one more
/// system call per policy file at every start): configuration files are small.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut text = String::with_capacity(1024);
    // Through `Take`, which reads until the end without the size query `File` makes.
    file.take(u64::MAX).read_to_string(&mut text)?;
    Ok(text)
}

/// The agent file, or a problem that says how to name another.
fn read_agent_file(path: &Path) -> Result<SourceFile, Problem> {
    read_file(path).map_err(|mut problem| {
        problem.message.push_str("; name the agent file with --config PATH or KEYTURN_CONFIG");
        problem
    })
}

/// Policy files are the directory's `*.toml` files, sorted by name. Hidden files (editor swap
/// files, `..data`-style entries) and subdirectories are not policies.
fn read_policy_dir(dir: &Path, agent_file: &Path) -> Result<Vec<SourceFile>, ConfigErrors> {
    let entries = fs::read_dir(dir).map_err(|e| {
        ConfigErrors(vec![Problem {
            file: agent_file.to_path_buf(),
            line: None,
            key: "agent.policies".into(),
            message: format!("cannot read policy directory {}: {e}", dir.display()),
            skipped: false,
        }])
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let hidden = name.to_str().unwrap_or("").starts_with('.');
            let toml = Path::new(&name).extension().is_some_and(|ext| ext == "toml");
            // The entry's own type, from the listing; only a link (a Kubernetes ConfigMap's
            // files are links) costs a look at what it leads to.
            let is_file = || match entry.file_type() {
                Ok(kind) if kind.is_symlink() => entry.path().is_file(),
                Ok(kind) => kind.is_file(),
                Err(_) => entry.path().is_file(),
            };
            !hidden && toml && is_file()
        })
        .map(|entry| entry.path())
        .collect();
    // One directory: the names decide the order (comparing whole paths is most of the cost of
    // sorting a thousand of them).
    paths.sort_unstable_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut files = Vec::with_capacity(paths.len());
    let mut problems = Vec::new();
    for path in paths {
        match read_file(&path) {
            Ok(file) => files.push(file),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() { Ok(files) } else { Err(ConfigErrors(problems)) }
}
