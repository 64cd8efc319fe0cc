use clap::Parser;

fn main() {
    // The credential helper root berth starts for itself (src/sys/as_user.rs):
    // not a command for people, so not in the command line's help.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == berth::sys::as_user::SUBCOMMAND)
    {
        berth::sys::as_user::helper_main(&args[1..]);
    }
    let cli = berth::cli::Cli::parse();
    std::process::exit(berth::job::main(cli));
}
