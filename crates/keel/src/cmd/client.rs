pub fn run(_a: crate::cli::ClientArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
