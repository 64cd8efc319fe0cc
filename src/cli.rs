//! The command line. Kept free of logic so man pages and completions can be
//! generated from it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Run HPC batch jobs in Docker containers, safely, as the job's user",
    long_about = "berth turns a batch job's request (LSF or Slurm) into one docker run command that the site policy allows, runs it as the job's user, and returns the container's exit code.\n\nExit codes: the container's own; 64 malformed request; 69 docker or broker unavailable; 70 internal error; 77 denied by policy; 78 invalid or unsafe policy or installation."
)]
pub struct Cli {
    /// Site policy file (never taken from the environment)
    #[arg(long, global = true, value_name = "FILE", default_value = crate::policy::DEFAULT_PATH)]
    pub policy: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Plan and launch a job; exit with the container's exit code
    Run(RunArgs),
    /// Print the plan for a job without running anything (exit 77 if denied)
    Explain(ExplainArgs),
    /// Validate policy files
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scheduler {
    /// LSF job environment: LSFUSER names the job owner when the caller is a trusted relay
    Lsf,
    /// Plain environment: the caller is always the job owner
    Env,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where the job's request comes from
    #[arg(long, value_enum, default_value_t = Scheduler::Lsf)]
    pub scheduler: Scheduler,

    /// The job's command (one argument is run as a /bin/sh -c script)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Print the plan as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy file: syntax, unknown keys, roots, unsafe settings, ownership
    Check {
        /// Policy file to check (default: the --policy file)
        file: Option<PathBuf>,
        /// Print findings as JSON
        #[arg(long)]
        json: bool,
    },
}
