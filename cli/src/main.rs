//! `stowage`: the command-line client of the orchestrator.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the stowage CLI is not implemented yet")
}
