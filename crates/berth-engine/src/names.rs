//! Generated container names in Docker's adjective_noun style.

const ADJECTIVES: &[&str] = &[
    "agile", "bold", "brave", "bright", "calm", "clever", "cool", "eager", "fair", "fast",
    "gentle", "happy", "jolly", "keen", "kind", "lively", "lucid", "merry", "nimble", "proud",
    "quick", "quiet", "sharp", "steady", "sunny", "swift", "tender", "vivid", "warm", "wise",
    "witty", "zen",
];
const NOUNS: &[&str] = &[
    "anchor", "barge", "buoy", "cabin", "canal", "cargo", "clipper", "compass", "crane", "deck",
    "dock", "ferry", "galley", "harbor", "hull", "jetty", "keel", "lantern", "mast", "pier",
    "pilot", "port", "quay", "rudder", "sail", "schooner", "skiff", "tide", "tug", "wharf",
    "yacht", "yard",
];

/// A name from two random bytes; callers retry on collision.
pub fn generate(r: [u8; 2]) -> String {
    format!(
        "{}_{}",
        ADJECTIVES[r[0] as usize % ADJECTIVES.len()],
        NOUNS[r[1] as usize % NOUNS.len()]
    )
}
