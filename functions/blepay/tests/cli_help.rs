//! Every argument of every `blepay` command says what it is in `--help` (issue 15, item 3): a
//! flag without a description is a question a newcomer has to ask.
#![allow(clippy::unwrap_used, clippy::panic)]

use clap::{Args, Command};

/// The arguments (flags and positionals, but clap's own help/version) with no help text, as
/// `command path: --flag`.
fn undocumented(cmd: &Command, path: &str, out: &mut Vec<String>) {
    let here = format!("{path} {}", cmd.get_name());
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            out.push(format!("{here}: {id}"));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(format!("{here} {} (the command itself)", sub.get_name()));
        }
        undocumented(sub, &here, out);
    }
}

#[test]
fn every_argument_of_every_command_has_a_description() {
    let mut missing = Vec::new();
    for cmd in [
        blepay::args::ServeCommand::augment_args(Command::new("serve")),
        blepay::ops::OpsArgs::augment_args(Command::new("ops")),
        blepay::phone::PhoneArgs::augment_args(Command::new("phone")),
        blepay::device::DeviceArgs::augment_args(Command::new("device")),
        blepay::bench::BenchArgs::augment_args(Command::new("bench")),
    ] {
        let mut cmd = cmd;
        cmd.build();
        undocumented(&cmd, "blepay", &mut missing);
    }
    assert!(
        missing.is_empty(),
        "arguments without a description:\n{}",
        missing.join("\n")
    );
}
