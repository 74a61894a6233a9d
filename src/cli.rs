//! Command-line interface (clap derive). Flags mirror tunnel-rs so its users feel at home.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "porthole",
    version,
    about = "Forward TCP and UDP ports between machines behind NATs, over QUIC",
    long_about = "Forward TCP and UDP ports between machines behind NATs and firewalls, with no open port \
and no VPN.\n\nA `server` runs next to the services, a `client` next to the user. They meet over QUIC \
(iroh): hole-punched when the NATs allow it, through a relay when they don't. The client proves itself \
with an auth token, then asks for sources (tcp://host:port, udp://host:port) that the server forwards \
only if they are inside its allow-list.",
    after_help = "Quick start (one machine, offline):\n  \
porthole relay --http-bind 127.0.0.1:3340 &\n  \
porthole generate-token --output token.txt\n  \
porthole server --relay-url http://127.0.0.1:3340 --allowed-tcp 127.0.0.0/8 --auth-tokens-file token.txt\n  \
porthole client --relay-url http://127.0.0.1:3340 --ticket <TICKET printed by the server> \\\n    \
--source tcp://127.0.0.1:22 --listen 127.0.0.1:2222 --auth-token-file token.txt\n\n\
Logs: -v / -vv for more, -q / -qq for less; RUST_LOG overrides both."
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (repeat for less).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Worker threads: 1 runs everything on one thread (the default for server, client and
    /// nodepass: fastest per tunnel, see docs/BENCHMARKS.md), 0 uses one per CPU core (the
    /// default for relay), N uses N. Busy servers with many clients may want 0.
    #[arg(long, global = true, value_name = "N", env = "PORTHOLE_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run next to the services: accept clients and forward what they ask for, within the allow-list.
    Server(ServerArgs),
    /// Run next to the user: listen locally and carry each connection to the server.
    Client(ClientArgs),
    /// Run a self-hosted iroh relay (plain HTTP for local use, HTTPS + QUIC address discovery for NAT traversal).
    Relay(RelayArgs),
    /// Print new auth tokens (18 characters, checksummed), one per line.
    GenerateToken(GenerateTokenArgs),
    /// Create the server's secret key file (mode 0600) and print its EndpointId on stderr.
    GenerateServerKey(GenerateServerKeyArgs),
    /// Print the EndpointId of a secret key file.
    ShowServerId(ShowServerIdArgs),
    /// Create a client key file (mode 0600) and print its client id on stderr: list the
    /// id in the server's access file (`keys = [...]`), give the file to `client
    /// --client-key-file`.
    GenerateClientKey(GenerateServerKeyArgs),
    /// Print the client id of a client key file (what the server's access file lists).
    ShowClientId(ShowClientIdArgs),
    /// Create a private CA and a relay certificate signed by it (for `relay --tls-cert`, peers use `--relay-ca`).
    GenerateRelayCert(GenerateRelayCertArgs),
    /// Run a NodePass v1.14 compatible tunnel end (server or client) from a NodePass URL.
    Nodepass(NodepassArgs),
    /// Ping the server through the tunnel: round-trip time and the path that carried it
    /// (direct with the address, or the relay).
    Ping(PingArgs),
    /// Print a shell completion script (bash: `porthole completions bash >
    /// ~/.local/share/bash-completion/completions/porthole`; install.sh installs them).
    Completions(CompletionsArgs),
    /// Print the manual page (roff: `porthole man | man -l -`; install.sh installs them).
    Man(ManArgs),
    /// Show what running servers, clients and relays of this user are doing: sessions,
    /// paths, RTTs, forwards, bytes, refusals (from their control sockets).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
porthole status                      # every instance of this user\n  \
porthole status --watch              # refresh every 2 s\n  \
porthole status --json | jq '.server.sessions[].path'\n  \
porthole status --socket /run/porthole/server-1234.sock\n\n\
Instances put their sockets in $XDG_RUNTIME_DIR/porthole/ (root: /run/porthole/, else\n\
/tmp/porthole-UID/) unless started with --control-socket. docs/OPERATING.md documents the JSON.")]
pub struct StatusArgs {
    /// The control socket of one instance (default: every socket in the default directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the report as JSON (one object per instance, one per line).
    #[arg(long)]
    pub json: bool,
    /// Refresh every N seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
}

/// Where a running server, client or relay can be watched from.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Status and metrics")]
pub struct WatchArgs {
    /// Control socket for `porthole status` (default: ROLE-PID.sock in $XDG_RUNTIME_DIR/porthole/,
    /// /run/porthole/ for root, else /tmp/porthole-UID/; `none` for no socket).
    #[arg(long, value_name = "PATH|none")]
    pub control_socket: Option<String>,
    /// Serve Prometheus metrics (/metrics), the status as JSON (/api/status) and a live
    /// status page (/) on this address, e.g. 127.0.0.1:9090. Any address but loopback
    /// needs a bearer token (--metrics-token-file).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// File holding the bearer token the metrics listener requires (else the
    /// PORTHOLE_METRICS_TOKEN variable). Scrapers send `Authorization: Bearer TOKEN`;
    /// the page is opened as http://ADDR/#token=TOKEN.
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A subcommand's page, porthole-SUBCOMMAND(1), instead of porthole(1).
    #[arg(value_name = "SUBCOMMAND")]
    pub command: Option<String>,
    /// Write every page (porthole.1, porthole-SUBCOMMAND.1) into this directory instead.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub out_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
porthole ping --ticket pt1... --auth-token-file token.txt\n  \
porthole ping -c client.toml --until-direct        # wait for hole punching to succeed\n\n\
Exit codes: 0 answered (and went direct, with --until-direct), 1 no answer or never direct,\n\
2 usage/config, 3 token refused.")]
pub struct PingArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub server: ServerChoiceArgs,
    /// How many pings, one a second.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub count: u32,
    /// Stop at the first ping over a direct path; fail if none came within --count.
    #[arg(long)]
    pub until_direct: bool,
    #[command(flatten)]
    pub iroh: IrohArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
    #[command(flatten)]
    pub direct_paths: DirectPathArgs,
}

impl PingArgs {
    /// The same settings a client would take, without forwards.
    pub fn into_client(self) -> ClientArgs {
        ClientArgs {
            config: self.config,
            server: self.server,
            sources: Vec::new(),
            publish: Vec::new(),
            listens: Vec::new(),
            socks: Vec::new(),
            http_proxy: Vec::new(),
            proxy_auth_file: None,
            iroh: self.iroh,
            quic: self.quic,
            resume: ResumeArgs::default(),
            direct_paths: self.direct_paths,
            manual: ManualArgs::default(),
            watch: WatchArgs {
                control_socket: Some("none".into()),
                ..WatchArgs::default()
            },
        }
    }
}

/// Which server a client (or `ping`) reaches, and the token it shows.
#[derive(Debug, Args)]
pub struct ServerChoiceArgs {
    /// The server's EndpointId (printed by the server and by show-server-id).
    #[arg(long, value_name = "ID", conflicts_with = "ticket")]
    pub server_node_id: Option<porthole_proto::key::EndpointId>,
    /// The ticket printed by the server (id + relays + addresses in one string).
    #[arg(long, value_name = "TICKET")]
    pub ticket: Option<porthole_proto::ticket::Ticket>,
    /// A direct address of the server (repeatable): reach it on a LAN or offline, no relay needed.
    #[arg(long = "server-addr", value_name = "IP:PORT")]
    pub server_addrs: Vec<SocketAddr>,
    /// Auth token. Visible to other local users in the process list: prefer
    /// --auth-token-file or the PORTHOLE_AUTH_TOKEN variable.
    #[arg(long, value_name = "TOKEN")]
    pub auth_token: Option<String>,
    /// File holding the auth token.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Prove this client key (from generate-client-key) instead of showing a token: the
    /// server's access file must list its id. The proof is bound to each connection.
    #[arg(long, value_name = "FILE")]
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(
    after_help = "URL: <server|client>://[key@]host:port/target[,target...]?query\n\n\
Examples:\n  \
porthole nodepass 'server://0.0.0.0:10101/0.0.0.0:8080?tls=1'      # users connect to :8080 here\n  \
porthole nodepass 'client://server.example.com:10101/127.0.0.1:8080' # traffic goes to 127.0.0.1:8080\n  \
porthole nodepass 'client://127.0.0.1:2222/10.0.0.5:22?mode=1'     # single-end: a local forwarder\n\n\
Query parameters (defaults in brackets):\n  \
tls=0|1|2 [0]          0 plain, 1 self-signed, 2 crt= and key= files; sni= for clients\n  \
type=0|1|2|3 [0]       server's pool: TCP, QUIC, WebSocket, HTTP/2 (clients follow)\n  \
min= [64], max= [1024] client / server pool size\n  \
mode=0|1|2 [0]         0 auto, 1 reverse / single-end, 2 forward / dual-end\n  \
slot=, rate=, read=    sessions, Mbit/s, idle timeout (e.g. 30s)\n  \
proxy=1, dial=         PROXY v1 to the target, source IP for dialing\n  \
notcp=1, noudp=1       disable TCP / UDP\n  \
dns= [5m], lbs=0|1|2   target name cache; round robin, fastest, primary with fallback\n  \
block=1|2|3            refuse users that start SOCKS, HTTP, TLS (digits combine)\n  \
handshake=, udpframe=  auto|https|http, auto|0|1: for peers of other NodePass versions\n  \
log=none|debug|info|warn|error|event\n\n\
The tunnel key is the URL's user part; without one both ends derive it from the tunnel port.\n\
tls=2 clients trust the system roots and SSL_CERT_FILE.\n\
See docs/NODEPASS.md."
)]
pub struct NodepassArgs {
    /// The NodePass URL. It may hold the tunnel key: prefer PORTHOLE_NODEPASS_URL or a config file (mode = "nodepass").
    #[arg(
        value_name = "URL",
        env = "PORTHOLE_NODEPASS_URL",
        hide_env_values = true
    )]
    pub url: String,
}

/// Transport / compatibility mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// iroh: hole punching, relay fallback, discovery (default).
    Iroh,
    /// Plain QUIC + STUN with a copy-paste offer and answer (no iroh infrastructure).
    Manual,
    /// NodePass v1.14-v2.0 compatible pool tunnels (direct links).
    Nodepass,
}

#[derive(Debug, Args, Default)]
pub struct ConfigArgs {
    /// Read settings from this TOML file (flags given on the command line win).
    #[arg(short, long, value_name = "FILE", conflicts_with = "default_config")]
    pub config: Option<PathBuf>,
    /// Read $XDG_CONFIG_HOME/porthole/<role>.toml (~/.config/porthole/<role>.toml).
    #[arg(long)]
    pub default_config: bool,
    /// Transport: iroh (default), manual, nodepass.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
}

/// Settings shared by server and client in iroh mode.
#[derive(Debug, Args, Default)]
pub struct IrohArgs {
    /// Relay server URL (repeatable). `none` disables relays (direct addresses only).
    /// Without it, iroh's public relays and discovery are used. Append `?quic-port=N`
    /// when the relay's QUIC address discovery is not on UDP 7842.
    #[arg(long = "relay-url", value_name = "URL")]
    pub relay_urls: Vec<String>,
    /// PEM file with a CA certificate to trust for the relay's TLS (added to the standard roots).
    #[arg(long, value_name = "PEM")]
    pub relay_ca: Option<PathBuf>,
    /// Use only the relay: never a direct path (command line only).
    #[arg(long)]
    pub relay_only: bool,
    /// Discovery by EndpointId: a pkarr URL (https://dns.example.com/pkarr) or `none`.
    #[arg(long, value_name = "URL|none")]
    pub dns_server: Option<porthole_transport_iroh::DnsSetting>,
    /// Do not ask the home router for a port mapping (UPnP / PCP / NAT-PMP).
    #[arg(long)]
    pub no_portmap: bool,
    /// Never punch a direct path beside a relayed tunnel. By default, when the tunnel runs
    /// through a relay and one side's NAT is symmetric (which iroh's own hole punching
    /// cannot cross), the client and server punch one with birthday probing and port
    /// prediction, signalled over the tunnel, and move it there; both sides must allow it.
    /// Needs two STUN servers that answer (--stun-server).
    #[arg(long)]
    pub no_upgrade: bool,
    /// Local UDP address for QUIC (repeatable; default all interfaces). The direct
    /// upgrade's socket takes the IP of the first IPv4 one, on a fresh port.
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Vec<SocketAddr>,
    /// Close a UDP flow after this much silence (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub udp_idle_timeout: Option<std::time::Duration>,
}

/// QUIC tuning, the same in iroh and manual mode (config file: the `[quic]` table).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "QUIC tuning")]
pub struct QuicArgs {
    /// Congestion controller: bbr (default; keeps its rate through random loss), cubic
    /// (backs off on every loss; fairer to TCP flows on a shallow-buffered link), newreno.
    #[arg(long, value_name = "NAME")]
    pub congestion: Option<porthole_engine::quic_params::Congestion>,
    /// Give the peer up after this much silence (default 90s, 5s to 1h). Outages shorter
    /// than this keep every connection open; a peer that vanished for good is noticed
    /// only after it. Both ends propose one; the shorter wins.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<std::time::Duration>,
    /// Keep-alive interval (default 5s, 1s to 25s, at most a third of the idle
    /// timeout): holds NAT mappings open; the client probes a server silent for two of
    /// these and a second.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_alive: Option<std::time::Duration>,
}

/// Resuming TCP connections after a lost tunnel, the same on server and client (config
/// file: the `[resume]` table).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Resuming after a lost tunnel")]
pub struct ResumeArgs {
    /// How long forwarded TCP connections stay open once the tunnel is lost (longer than
    /// the idle timeout, a server restart...), to continue on the next tunnel with no
    /// byte lost (default 5m, at most 24h; 0 turns it off: connections are reset when
    /// the tunnel is lost). Each side keeps them as long as its own setting says.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub resume_grace: Option<std::time::Duration>,
    /// Unacknowledged data kept per connection for a resume, in MiB (default 16, 1 to
    /// 1024). A sender that reaches it waits; below a path's bandwidth x delay it caps
    /// one connection's rate.
    #[arg(long, value_name = "MIB")]
    pub resume_buffer: Option<usize>,
    /// The same over all connections of one tunnel, in MiB (default 64, at least
    /// --resume-buffer).
    #[arg(long, value_name = "MIB")]
    pub resume_session_buffer: Option<usize>,
}

/// Which addresses direct paths may use, the same in iroh and manual mode (config file:
/// the `[direct_paths]` table).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Direct paths")]
pub struct DirectPathArgs {
    /// Never advertise or send to these (repeatable, or comma-separated): a network
    /// (192.168.0.0/16), an address, or an interface name (wg0, matched for local
    /// addresses on it and remote addresses routed through it).
    #[arg(
        long = "exclude-addr",
        value_name = "CIDR|IFACE",
        value_delimiter = ','
    )]
    pub exclude: Vec<porthole_engine::direct_paths::AddrRule>,
    /// Use only these for direct paths (same syntax). Also how to allow a tunnel
    /// interface, which is skipped by default: addresses on or routed through TUN,
    /// WireGuard or other tunnel devices could route porthole through its own forward.
    #[arg(long = "pin-addr", value_name = "CIDR|IFACE", value_delimiter = ',')]
    pub pin: Vec<porthole_engine::direct_paths::AddrRule>,
}

/// Settings of manual mode (plain QUIC + STUN, copy-paste offer and answer).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Manual mode (--mode manual)")]
pub struct ManualArgs {
    /// STUN server for learning the public address (repeatable); `none` = local addresses
    /// only (LAN). Default: stun.l.google.com:19302 and stun.cloudflare.com:3478. iroh
    /// mode uses them for the direct upgrade (`none` turns it off).
    #[arg(long = "stun-server", value_name = "HOST:PORT|none")]
    pub stun_servers: Vec<String>,
    /// The offer: the client writes it here, the server reads it from here (waiting for
    /// it to appear). Default: client prints it on stdout, server reads stdin.
    #[arg(long, value_name = "FILE")]
    pub offer_file: Option<PathBuf>,
    /// The answer: the server writes it here, the client reads it from here. Default:
    /// server prints it on stdout, client reads stdin.
    #[arg(long, value_name = "FILE")]
    pub answer_file: Option<PathBuf>,
    /// Give up hole punching after this long (default: client 30s, server 120s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub punch_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  porthole generate-server-key --output server.key\n  \
porthole server --secret-file server.key --allowed-tcp 127.0.0.1/32:22 --auth-tokens-file tokens.txt\n  \
porthole server --mode manual --allowed-tcp 127.0.0.1/32:22 --auth-tokens-file tokens.txt   # then paste the client's offer"
)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Secret key file (from generate-server-key); else env PORTHOLE_SECRET; else a new identity per run.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Allowed TCP destinations: CIDR with optional ports, e.g. 127.0.0.0/8, 10.0.0.0/8:5432 (repeatable).
    #[arg(long = "allowed-tcp", value_name = "CIDR")]
    pub allowed_tcp: Vec<porthole_engine::policy::AllowRule>,
    /// Allowed UDP destinations, same syntax (repeatable). Empty = UDP refused.
    #[arg(long = "allowed-udp", value_name = "CIDR")]
    pub allowed_udp: Vec<porthole_engine::policy::AllowRule>,
    /// Where clients may publish services with --publish (repeatable): CIDR with
    /// ports, e.g. 0.0.0.0/32:8000-8999 (the address the client asks the server to
    /// listen on). Empty = nowhere. For the clients of --auth-tokens(-file); named
    /// clients have allowed_bind_tcp / _udp / _names in the access file.
    #[arg(
        long = "allowed-bind-tcp",
        value_name = "CIDR:PORTS",
        help_heading = "Published services"
    )]
    pub allowed_bind_tcp: Vec<porthole_engine::policy::AllowRule>,
    /// Where clients may publish UDP services, same syntax (repeatable).
    #[arg(
        long = "allowed-bind-udp",
        value_name = "CIDR:PORTS",
        help_heading = "Published services"
    )]
    pub allowed_bind_udp: Vec<porthole_engine::policy::AllowRule>,
    /// Names clients may publish on a shared TCP port (routed by TLS SNI or HTTP
    /// Host): app.example.com or *.example.com (repeatable). Empty = no names.
    #[arg(
        long = "allowed-bind-name",
        value_name = "NAME",
        help_heading = "Published services"
    )]
    pub allowed_bind_names: Vec<crate::config::raw::BindName>,
    /// Accepted auth token (repeatable). Visible to other local users in the process
    /// list: prefer --auth-tokens-file.
    #[arg(long = "auth-tokens", value_name = "TOKEN")]
    pub auth_tokens: Vec<String>,
    /// File with accepted tokens, one per line (# comments allowed). Re-read on SIGHUP
    /// and when it changes: removing a line revokes that token at once.
    #[arg(long, value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Named clients, each with its own tokens, allow-lists and limits (TOML; see
    /// access.toml.example). Re-read on SIGHUP and when it changes; a client removed or
    /// expired is disconnected within a second.
    #[arg(long, value_name = "FILE")]
    pub access_file: Option<PathBuf>,
    /// Most concurrent client connections (default 100).
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    #[command(flatten)]
    pub iroh: IrohArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub direct_paths: DirectPathArgs,
    #[command(flatten)]
    pub manual: ManualArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
porthole client --ticket pt1... --source tcp://127.0.0.1:22 --listen 127.0.0.1:2222 --auth-token-file token.txt\n  \
porthole client --server-node-id <ID> --source udp://10.0.0.1:51820 --listen 127.0.0.1:51820 \\\n    \
--source tcp://127.0.0.1:5432 --listen 127.0.0.1:5432   # several forwards: repeat the pair\n  \
porthole client --mode manual --source tcp://127.0.0.1:22 --listen 127.0.0.1:2222 --auth-token-file token.txt\n    \
# prints an offer for the server, then reads the server's answer\n\n\
porthole client --ticket pt1... --publish tcp://0.0.0.0:8443=127.0.0.1:443 --auth-token-file token.txt\n    \
# visitors of the server's port 8443 reach 127.0.0.1:443 on this machine\n\n\
Exit codes: 0 stopped, 1 error, 2 usage/config, 3 token refused, 4 source refused, 5 version mismatch,\n\
6 access revoked or expired, 7 publish refused.")]
pub struct ClientArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub server: ServerChoiceArgs,
    /// What to reach on the server's side: tcp://HOST:PORT or udp://HOST:PORT (pairs with --listen).
    /// TCP options after `?`: proxy_protocol=v1|v2 sends the target a PROXY header naming the
    /// user's address (nginx `listen ... proxy_protocol`); accept_proxy_protocol=1 reads one
    /// from each local connection (porthole behind a load balancer), e.g.
    /// 'tcp://127.0.0.1:80?proxy_protocol=v2'.
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    /// Where to listen locally for that source, e.g. 127.0.0.1:2222 (pairs with --source;
    /// `--target` is the older name).
    #[arg(long = "listen", visible_alias = "target", value_name = "ADDR")]
    pub listens: Vec<String>,
    /// Publish a service of this side on the server (a reverse forward, repeatable):
    /// SERVER_SIDE=CLIENT_SIDE, e.g. tcp://0.0.0.0:8443=127.0.0.1:443 makes the server
    /// listen on its port 8443 and carry each visitor to 127.0.0.1:443 here; also
    /// udp://. Options after `?`: name=app.example.com shares the server's port with
    /// other services by TLS SNI / HTTP Host; proxy_protocol=v1|v2 tells the target the
    /// visitor's address; accept_proxy_protocol=1 when a load balancer fronts the
    /// server. The server must allow it (--allowed-bind-tcp/udp, --allowed-bind-name).
    #[arg(long = "publish", value_name = "URL")]
    pub publish: Vec<String>,
    /// A SOCKS5 proxy on this local address (repeatable): each connection names its own
    /// destination (names resolved on the server's side, as socks5h), which the server
    /// checks against its allow-list. Use it instead of fixed --source/--listen pairs.
    #[arg(long = "socks", value_name = "ADDR")]
    pub socks: Vec<SocketAddr>,
    /// An HTTP CONNECT proxy on this local address (repeatable), for tools that only
    /// speak HTTP proxies (git, curl, package managers, browsers); same checks as --socks.
    #[arg(long = "http-proxy", value_name = "ADDR")]
    pub http_proxy: Vec<SocketAddr>,
    /// `user:password` (one line) the proxies require: SOCKS5 username/password, HTTP
    /// Basic. Needed for any proxy address but loopback; else env PORTHOLE_PROXY_AUTH.
    #[arg(long, value_name = "FILE")]
    pub proxy_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub iroh: IrohArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub direct_paths: DirectPathArgs,
    #[command(flatten)]
    pub manual: ManualArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
porthole relay --http-bind 127.0.0.1:3340                     # local/dev: relaying only\n  \
porthole relay --https-bind 0.0.0.0:443 --tls-cert cert.pem --tls-key key.pem --quic-bind 0.0.0.0:7842\n\n\
Peers behind NATs learn their public address only from an HTTPS relay with QUIC address discovery;\n\
with a plain-HTTP relay they stay on the relay path. Clients of a private CA trust it with --relay-ca.")]
pub struct RelayArgs {
    /// Plain HTTP address (the relay itself without TLS; the captive-portal probe with TLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:3340")]
    pub http_bind: SocketAddr,
    /// HTTPS address (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub https_bind: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS and QUIC address discovery.
    #[arg(long, value_name = "FILE", requires = "https_bind")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "https_bind")]
    pub tls_key: Option<PathBuf>,
    /// UDP address for QUIC address discovery (default 0.0.0.0:7842 with HTTPS; `none` to disable).
    #[arg(long, value_name = "ADDR|none")]
    pub quic_bind: Option<String>,
    /// Also answer STUN binding requests on this UDP address (repeatable; for manual mode).
    /// Two addresses let peers tell cone from symmetric NATs.
    #[arg(long, value_name = "ADDR")]
    pub stun_bind: Vec<SocketAddr>,
    /// Run only the STUN responder(s), no iroh relay.
    #[arg(long, requires = "stun_bind")]
    pub stun_only: bool,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
pub struct GenerateTokenArgs {
    /// How many tokens to print.
    #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// Write the tokens to this file (created with mode 0600) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace an existing --output file.
    #[arg(long, requires = "output")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GenerateServerKeyArgs {
    /// Where to write the key (mode 0600); `-` writes it to stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  porthole generate-relay-cert --name relay.example.com --name 203.0.113.7 --out-dir relay-tls\n  \
porthole relay --https-bind 0.0.0.0:443 --tls-cert relay-tls/cert.pem --tls-key relay-tls/key.pem\n  \
porthole server --relay-url https://relay.example.com --relay-ca relay-tls/ca.pem ..."
)]
pub struct GenerateRelayCertArgs {
    /// A DNS name or IP address the relay is reached by (repeatable).
    #[arg(long = "name", value_name = "NAME|IP", required = true)]
    pub names: Vec<String>,
    /// Directory for ca.pem, cert.pem and key.pem (key.pem is created 0600).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ShowClientIdArgs {
    /// The client key file (from generate-client-key).
    #[arg(long, value_name = "FILE")]
    pub client_key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ShowServerIdArgs {
    /// Secret key file; else env PORTHOLE_SECRET.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
