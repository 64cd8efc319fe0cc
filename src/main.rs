use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The credential helper root berth starts for itself (src/sys/as_user.rs):
    // not a command for people, so not in the command line's help.
    if args
        .get(1)
        .is_some_and(|a| a == berth::sys::as_user::SUBCOMMAND)
    {
        berth::sys::as_user::helper_main(&args[2..]);
    }
    let cli = match berth::cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // The esub rejects the submission on every failure, this one too.
        Err(e) if berth::sched::lsf::esub::is_esub_command_line(&args) => {
            std::process::exit(berth::sched::lsf::esub::usage_error(&e))
        }
        Err(e) => e.exit(),
    };
    std::process::exit(berth::app::job::main(cli));
}
