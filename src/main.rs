use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match berth::cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // The esub rejects the submission on every failure, this one too.
        Err(e) if berth::lsf::esub::is_esub_command_line(&args) => {
            std::process::exit(berth::lsf::esub::usage_error(&e))
        }
        Err(e) => e.exit(),
    };
    std::process::exit(berth::job::main(cli));
}
