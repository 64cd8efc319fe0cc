use clap::Parser;

fn main() {
    let cli = berth::cli::Cli::parse();
    std::process::exit(berth::job::main(cli));
}
