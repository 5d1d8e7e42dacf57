//! `statemesh keys list | install | use | remove`: the mesh keyring (see
//! `statemesh_net::keyring` and `docs/security.md`, "Rotating the mesh secret").
//!
//! Each acts on the keyring file (the secret file), under its lock, atomically. Every running
//! window of this machine that uses the file applies the change within 250 ms (it watches the
//! file); windows of other machines use their own copy: run the same commands there. Nothing is
//! pushed over the mesh (see `docs/security.md` for why).
//!
//! Exit codes: 0 done; 1 error (the keyring file refused, a refused change: the last key, the
//! primary key, a key not installed); 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use statemesh::{KeyId, Keyring, Secret, read_key_file};

/// Options shared by the `keys` commands.
#[derive(clap::Args, Debug)]
pub(crate) struct KeysArgs {
    /// The keyring (secret) file (default: `<config dir>/statemesh/secret`, created on first
    /// use).
    #[arg(long, global = true)]
    secret_file: Option<PathBuf>,
    /// Print JSON (one object) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: KeysOp,
}

#[derive(clap::Subcommand, Debug)]
enum KeysOp {
    /// The keys of the keyring, by id: the primary (which windows prove with) and the others
    /// (accepted).
    List,
    /// Installs a key as accepted (not primary): from a key file (32 raw bytes, as `statemesh
    /// keygen` writes, or 64 hex digits; mode 0600), or a fresh random one with --generate.
    Install {
        /// The key file.
        #[arg(required_unless_present = "generate", conflicts_with = "generate")]
        key_file: Option<PathBuf>,
        /// Generate a fresh key, and write it (0600) to this file too, for other machines
        /// (with --generate; without it the key exists only in this keyring).
        #[arg(long, requires = "generate")]
        export: Option<PathBuf>,
        /// Generate a fresh random key.
        #[arg(long)]
        generate: bool,
    },
    /// Makes an installed key the primary (the one windows prove with); the former primary
    /// stays accepted.
    Use {
        /// The key's id (16 hex digits, see `keys list`).
        id: String,
    },
    /// Removes an accepted key: peers proving with it are refused from then on. Refuses the
    /// last key and the primary key.
    Remove {
        /// The key's id (16 hex digits, see `keys list`).
        id: String,
    },
}

pub(crate) fn run(args: &KeysArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.secret_file {
        Some(p) => p.clone(),
        None => Secret::default_path()?,
    };
    let (ring, done) = match &args.op {
        KeysOp::List => (Keyring::load_or_create(&path)?, None),
        KeysOp::Install {
            key_file,
            generate,
            export,
        } => {
            let key = match (key_file, generate) {
                (Some(f), false) => read_key_file(f)?,
                _ => {
                    let key = Secret::generate();
                    if let Some(out) = export {
                        key.write(out, false)?;
                    }
                    key
                }
            };
            let (ring, id) = Keyring::edit(&path, |r| r.install(key))?;
            (ring, Some(("installed", id)))
        }
        KeysOp::Use { id } => {
            let id: KeyId = id.parse()?;
            let (ring, ()) = Keyring::edit(&path, |r| r.use_key(id))?;
            (ring, Some(("primary", id)))
        }
        KeysOp::Remove { id } => {
            let id: KeyId = id.parse()?;
            let (ring, ()) = Keyring::edit(&path, |r| r.remove(id))?;
            (ring, Some(("removed", id)))
        }
    };
    let primary = ring.primary_id().to_string();
    let accepted: Vec<String> = ring.ids().iter().map(ToString::to_string).collect();
    if args.json {
        let mut out = json!({"file": path, "primary": primary, "accepted": accepted});
        if let Some((what, id)) = done {
            out[what] = json!(id.to_string());
        }
        println!("{out}");
    } else {
        if let Some((what, id)) = done {
            println!("{what} {id}");
        }
        println!("keyring {}", path.display());
        for id in &accepted {
            let mark = if *id == primary {
                "primary "
            } else {
                "accepted"
            };
            println!("  {mark} {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
