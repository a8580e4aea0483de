//! Command-line interface: clap options, defaults and environment variables,
//! and dispatch to the shells. Cores never see clap types: each command turns
//! its options into a plain config struct first.

use clap::{Parser, Subcommand};

/// Hermes: end-to-end encrypted group messaging over a relay that learns nothing.
#[derive(Debug, Parser)]
#[command(name = "hermes", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of the one `hermes` binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: one poll loop, mailbox under the data directory.
    Relay(RelayArgs),
    /// Make an identity, register it with the relay, create the encrypted state.
    Register(ClientArgs),
    /// Create and manage groups.
    Group {
        /// What to do.
        #[command(subcommand)]
        cmd: GroupCmd,
        /// Common client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a message to a group (exits 0 once the relay stored it).
    Send {
        /// The group (name, or id if names repeat).
        #[arg(long, short)]
        group: String,
        /// The text (read from stdin if absent).
        text: Option<String>,
        /// Common client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fetch, verify, decrypt, print and ack what is waiting.
    Recv {
        /// Keep listening this many seconds for more.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
        /// One JSON object per line (group, sender, sent_at, text, id).
        #[arg(long)]
        json: bool,
        /// Common client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Interactive chat: /help lists the commands.
    Chat(ClientArgs),
    /// A relay and three users in a temp dir: a conversation, a removal,
    /// and what each read beside what the relay stored.
    Demo {
        /// Keep the temporary directory.
        #[arg(long)]
        keep: bool,
    },
    /// Show the safety number with USER, to compare out of band.
    Fingerprint {
        /// The other user.
        #[arg(value_name = "USER")]
        who: String,
        /// Common client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accept USER's changed identity (after checking its fingerprint).
    Trust {
        /// The other user.
        #[arg(value_name = "USER")]
        who: String,
        /// Common client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `hermes relay` options. Defaults need no configuration.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long, env = "HERMES_LISTEN", default_value = crate::relay::event_loop::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Directory for the mailbox segments and the relay's identity key.
    #[arg(long, env = "HERMES_DATA_DIR", default_value = crate::relay::event_loop::DEFAULT_DATA_DIR)]
    pub data_dir: std::path::PathBuf,
    /// When stored messages are synced to disk (and receipts sent).
    #[arg(long, value_enum, default_value_t = FsyncArg::Batch)]
    pub fsync: FsyncArg,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = crate::limits::MAX_FRAME_LEN)]
    pub max_frame_bytes: usize,
    /// Most client connections [default: the open-file soft limit, raised
    /// to the hard limit, minus a reserve].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Registrations per second, relay-wide [default: 1 per second].
    #[arg(long)]
    pub max_registrations_per_sec: Option<u32>,
    /// Frames per second per connection (and burst); past it the relay
    /// stops reading that socket for a moment.
    #[arg(long, default_value_t = crate::limits::RELAY_DEFAULT_FRAMES_PER_SEC)]
    pub max_frames_per_sec: u32,
    /// New connections accepted per second, relay-wide, after a burst of
    /// 5,000; past it they wait in the listen backlog. 0: no limit.
    #[arg(long, default_value_t = crate::limits::RELAY_MAX_ACCEPTS_PER_SEC)]
    pub max_accepts_per_sec: u32,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9333).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `--fsync` values (`mailbox::FsyncPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncArg {
    /// Receipt only after an msync covering the record.
    Always,
    /// Receipt once in the map; msync every few milliseconds.
    Batch,
    /// Receipt once in the map; write-back left to the OS.
    Never,
}

impl RelayArgs {
    /// The relay configuration these options describe.
    #[must_use]
    pub fn to_config(&self) -> crate::relay::ServerConfig {
        let mut config = crate::relay::ServerConfig {
            listen: self.listen,
            data_dir: Some(self.data_dir.clone()),
            fsync: match self.fsync {
                FsyncArg::Always => crate::mailbox::FsyncPolicy::Always,
                FsyncArg::Batch => crate::mailbox::FsyncPolicy::Batch,
                FsyncArg::Never => crate::mailbox::FsyncPolicy::Never,
            },
            max_connections: self.max_connections,
            max_frames_per_sec: self.max_frames_per_sec,
            max_accepts_per_sec: self.max_accepts_per_sec,
            metrics: self.metrics,
            handle_signals: true,
            ..crate::relay::ServerConfig::default()
        };
        config.core.max_frame = self.max_frame_bytes;
        if let Some(n) = self.max_registrations_per_sec {
            config.core.registrations_per_minute = n.saturating_mul(60);
        }
        config
    }
}

/// Options every client command shares.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The relay.
    #[arg(
        long,
        env = "HERMES_SERVER",
        default_value = "127.0.0.1:33001",
        global = true
    )]
    pub server: String,
    /// Your user name.
    #[arg(long, short, env = "HERMES_USER", global = true)]
    pub user: Option<String>,
    /// State directory [default: $XDG_DATA_HOME/hermes or ~/.local/share/hermes].
    #[arg(long, env = "HERMES_STATE_DIR", global = true)]
    pub state_dir: Option<std::path::PathBuf>,
    /// Read the passphrase from this file's first line (else
    /// HERMES_PASSPHRASE, else a prompt without echo).
    #[arg(long, global = true)]
    pub passphrase_file: Option<std::path::PathBuf>,
    /// Test suites only: cheap passphrase hashing (1,000 PBKDF2 rounds).
    /// A state file made so opens only with this flag again.
    #[arg(long, env = "HERMES_INSECURE_TEST_KDF", hide = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure_test_kdf: bool,
}

impl ClientArgs {
    /// The plain options the client commands take.
    ///
    /// # Errors
    /// No user given (neither `--user` nor `HERMES_USER`).
    pub fn to_options(&self) -> Result<crate::client::commands::CommonOptions, String> {
        use crate::client::commands::{CommonOptions, PassphraseSource, default_state_root};
        let passphrase = match (&self.passphrase_file, std::env::var("HERMES_PASSPHRASE")) {
            (Some(f), _) => PassphraseSource::File(f.clone()),
            (None, Ok(v)) => PassphraseSource::Value(zeroize::Zeroizing::new(v)),
            (None, Err(_)) => PassphraseSource::Prompt,
        };
        let user = self
            .user
            .clone()
            .ok_or("no user: pass --user NAME or set HERMES_USER")?;
        Ok(CommonOptions {
            server: self.server.clone(),
            user,
            state_root: self.state_dir.clone().unwrap_or_else(default_state_root),
            passphrase,
            kdf: if self.insecure_test_kdf {
                crate::client::state::KdfCost::insecure_for_tests(1_000)
            } else {
                crate::client::state::KdfCost::standard()
            },
        })
    }
}

/// `hermes group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group with you as admin.
    Create {
        /// Display name.
        name: String,
        /// Members besides you, comma-separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add users (admin only).
    Add {
        /// The group.
        group: String,
        /// Users to add.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (admin only); everyone else re-keys.
    Remove {
        /// The group.
        group: String,
        /// Members to remove.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group (an admin leaving dissolves it).
    Leave {
        /// The group.
        group: String,
    },
    /// Hand the admin role to another member.
    Admin {
        /// The group.
        group: String,
        /// The new admin. (Not named `user`: that id is the global
        /// `--user` / `HERMES_USER`, which clap would merge with it.)
        #[arg(value_name = "USER")]
        new_admin: String,
    },
    /// List your groups.
    List,
    /// List a group's members.
    Members {
        /// The group.
        group: String,
    },
}

impl From<GroupCmd> for crate::client::commands::GroupCommand {
    fn from(c: GroupCmd) -> Self {
        use crate::client::commands::GroupCommand as G;
        match c {
            GroupCmd::Create { name, members } => G::Create { name, members },
            GroupCmd::Add { group, users } => G::Add { group, users },
            GroupCmd::Remove { group, users } => G::Remove { group, users },
            GroupCmd::Leave { group } => G::Leave { group },
            GroupCmd::Admin { group, new_admin } => G::Admin {
                group,
                user: new_admin,
            },
            GroupCmd::List => G::List,
            GroupCmd::Members { group } => G::Members { group },
        }
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Returns the command's error, which `main` prints as one line on stderr.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::Relay(args)) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
            crate::relay::run_relay(args.to_config())?;
            Ok(())
        }
        Some(Command::Register(c)) => crate::client::commands::register(&c.to_options()?),
        Some(Command::Group { cmd, client }) => {
            crate::client::commands::group(&client.to_options()?, cmd.into())
        }
        Some(Command::Send {
            group,
            text,
            client,
        }) => crate::client::commands::send(&client.to_options()?, &group, text),
        Some(Command::Recv { wait, json, client }) => crate::client::commands::recv(
            &client.to_options()?,
            std::time::Duration::from_secs_f64(wait.clamp(0.0, 1e6)),
            json,
        ),
        Some(Command::Chat(c)) => crate::client::chat::run(&c.to_options()?),
        Some(Command::Demo { keep }) => crate::demo::run(keep),
        Some(Command::Fingerprint { who, client }) => {
            crate::client::commands::fingerprint(&client.to_options()?, &who)
        }
        Some(Command::Trust { who, client }) => {
            crate::client::commands::trust(&client.to_options()?, &who)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hermes group admin GROUP USER` once shared clap's id `user` with the
    /// global `--user`: the new admin's name replaced the caller's (the
    /// command ran as the new admin) and `--user` was refused.
    #[test]
    fn group_admin_keeps_the_caller_apart_from_the_new_admin() {
        for args in [
            &["hermes", "group", "admin", "crew", "bob", "--user", "zoe"][..],
            &["hermes", "group", "--user", "zoe", "admin", "crew", "bob"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Some(Command::Group {
                cmd: GroupCmd::Admin { group, new_admin },
                client,
            }) = cli.command
            else {
                panic!("{args:?} parsed as {:?}", cli.command);
            };
            assert_eq!(
                (group.as_str(), new_admin.as_str()),
                ("crew", "bob"),
                "{args:?}"
            );
            assert_eq!(client.user.as_deref(), Some("zoe"), "{args:?}");
        }
    }
}
