//! `keel certs`: a small CA and a certificate per process, for TLS across hosts
//! (docs/security.md). The issuing is `keel_auth::certs`'; this reads the names and
//! prints what was made.

use std::process::ExitCode;

use crate::cli::CertsArgs;

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let mut wanted = Vec::new();
    for spec in &args.names {
        let (name, hosts) = match spec.split_once('=') {
            Some((name, hosts)) => (name, hosts.split(',').map(str::to_owned).collect()),
            None => (spec.as_str(), Vec::new()),
        };
        let mut hosts: Vec<String> = hosts;
        hosts.extend(args.host.iter().cloned());
        wanted.push((name.to_owned(), hosts));
    }
    let issued = keel_auth::certs::ensure(&args.dir, &wanted)?;
    for line in &issued {
        println!("{line}");
    }
    let ca = args.dir.join("ca.pem");
    println!(
        "\nstart each process with --tls-cert {dir}/NAME.pem --tls-key {dir}/NAME.key --tls-ca {}",
        ca.display(),
        dir = args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
