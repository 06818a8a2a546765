//! `guardctl`: launch agents and check policies.

use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};
use guard_daemon::{cgroup, daemon, exit, launch};

/// Launch agents under Guard and check policies.
#[derive(Parser)]
#[command(version, max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as an agent: it and everything it starts are confined by
    /// the agent's profile from its first instruction. Standard streams and
    /// signals pass through; the exit status is the command's.
    Run {
        /// Agent profile name, as in the running policy.
        #[arg(long, env = "GUARD_AGENT")]
        agent: String,
        /// Guard's cgroup, relative to the cgroup2 mount (as given to guardd).
        #[arg(long, env = "GUARD_CGROUP_ROOT", default_value = cgroup::DEFAULT_ROOT)]
        cgroup_root: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate and compile a policy file without loading it. Exit 0 when
    /// valid, 4 when not (with the line, column and reason).
    Check {
        /// Policy file (YAML).
        file: PathBuf,
    },
}

fn main() {
    let args = Args::parse();
    let code = match args.command {
        Command::Run {
            agent,
            cgroup_root,
            command,
        } => {
            let result = cgroup::cgroup2_mount()
                .map_err(launch::LaunchError::from)
                .and_then(|mount| launch::run(&mount, &cgroup_root, &agent, &command));
            match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("guardctl: {e}");
                    exit::FAILURE
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match daemon::load_policy(&file, Vec::new()) {
            Ok(policy) => {
                for note in &policy.notes {
                    eprintln!("note: {note}");
                }
                println!("{}: valid: {}", file.display(), policy.summary());
                0
            }
            Err(fatal) => {
                eprintln!("guardctl: {fatal}");
                fatal.code
            }
        },
    };
    std::process::exit(code);
}
