pub fn run(_a: crate::cli::UpArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
