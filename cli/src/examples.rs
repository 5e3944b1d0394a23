//! The examples at the end of every `--help` (clap's `after_help`): one
//! place, so the commands' spellings stay the same across them.

/// `natkit --help`.
pub const TOP: &str = "\
Examples:
  natkit netcheck                      what your NAT does, and what that means for P2P
  natkit stun stun.example.org         your public address, IPv4 and IPv6
  natkit turn turn.example.org -u alice --password-file pw.txt
  natkit send photo.jpg --turn turn:turn.example.org --turn-secret-file secret.txt
  natkit receive --turn turn:turn.example.org --turn-secret-file secret.txt

Every command takes --json (one JSON document, on failure too) and --help.
Durations are written 250ms, 5s, 2m, 1h (a bare number is seconds).
Secrets come from flags, NATKIT_* environment variables or --*-file.";

/// `natkit stun --help`.
pub const STUN: &str = "\
Examples:
  natkit stun                               the default servers (see docs/CLI.md)
  natkit stun stun.example.org              one server, both address families
  natkit stun 192.0.2.1:3478 --json         one JSON document, also on failure
  natkit stun stun.example.org -4 --timeout 2s
  natkit stun [2001:db8::1]:3478 --bind [2001:db8::10]";

/// `natkit netcheck --help`.
pub const NETCHECK: &str = "\
Examples:
  natkit netcheck                           the default servers, IPv4 and IPv6
  natkit netcheck stun.example.org stun2.example.org
  natkit netcheck --turn turns:turn.example.org --turn-user alice --turn-password-file pw
  natkit netcheck --json > here.json        save a report ...
  natkit netcheck --compare here.json there.json
                                            ... and predict a connection between two peers
  natkit netcheck --every 30s --count 10    repeat and show what changed
  natkit netcheck stun.example.org --lifetime 2m
                                            how long the NAT keeps an idle mapping";

/// `natkit bench --help`.
pub const BENCH: &str = "\
Examples:
  natkit bench stun 127.0.0.1:3478 --duration 10s
  natkit bench turn 127.0.0.1:3478 --secret-file secret.txt --allocations 100
  natkit bench flood 127.0.0.1:3478 --secret-file secret.txt --json";

/// `natkit bench stun --help`.
pub const BENCH_STUN: &str = "\
Examples:
  natkit bench stun 127.0.0.1:3478 --duration 10s
  natkit bench stun 127.0.0.1:3478 --duration 5s --json > stun.json";

/// `natkit bench turn --help`.
pub const BENCH_TURN: &str = "\
Examples:
  natkit bench turn 127.0.0.1:3478 --secret-file secret.txt --allocations 100
  NATKIT_TURN_PASSWORD=... natkit bench turn 127.0.0.1:3478 --user bench --json";

/// `natkit bench flood --help`.
pub const BENCH_FLOOD: &str = "\
Examples:
  natkit bench flood 127.0.0.1:3478 --secret-file secret.txt --duration 10s
  natkit bench flood --ceiling --json";

/// `natkit turn --help`.
pub const TURN: &str = "\
Examples:
  natkit turn turn.example.org -u alice --password-file pw.txt
  NATKIT_TURN_SECRET=... natkit turn turns:turn.example.org
  natkit turn turn.example.org --secret-file secret.txt --transport tcp --json
  natkit turn 192.0.2.1 --secret-file secret.txt --peer 192.0.2.7:9 --timeout 3s";

/// `natkit creds --help`.
pub const CREDS: &str = "\
Examples:
  natkit creds --secret-file secret.txt --user alice --ttl 12h
  NATKIT_SECRET=... natkit creds --url turn:turn.example.org --json";

/// `natkit listen --help`.
pub const LISTEN: &str = "\
Examples:
  natkit listen --stun stun.example.org         then paste the peer's description
  natkit listen --turn turn:turn.example.org --turn-secret-file secret.txt > received.bin";

/// `natkit connect --help`.
pub const CONNECT: &str = "\
Examples:
  natkit connect --stun stun.example.org < file.bin
  natkit connect --turn turns:turn.example.org --turn-secret-file secret.txt";

/// `natkit send --help`.
pub const SEND: &str = "\
Examples:
  natkit send photo.jpg --stun stun.example.org
  natkit send photo.jpg --turn turn:turn.example.org --turn-secret-file secret.txt
  natkit send notes.txt slides.pdf photos/ --turn turn:turn.example.org --turn-secret-file secret.txt
                                  several files and folders, one code, one list to accept
  natkit send big.iso --turn turn:turn.example.org --turn-secret-file secret.txt --json > sent.json";

/// `natkit receive --help`.
pub const RECEIVE: &str = "\
Examples:
  natkit receive --stun stun.example.org -o photos/
  natkit receive --turn turn:turn.example.org --turn-secret-file secret.txt
  natkit receive 48213-copper-lagoon-tiger --turn turn:turn.example.org --turn-secret-file secret.txt -o inbox/ --yes";
