pub fn run(_a: crate::cli::NodeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
