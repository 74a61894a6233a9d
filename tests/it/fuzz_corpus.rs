//! The fuzz corpora (fuzz/corpus/*), replayed through the same decoder bodies the fuzz
//! targets run: every input that ever mattered stays a regression test.

type Exercise = fn(&[u8]);

#[test]
fn fuzz_corpora_replay_without_panics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let targets: [(&str, Exercise); 4] = [
        ("frames", porthole_proto::exercise::frames),
        ("datagrams", porthole_proto::exercise::datagrams),
        ("texts", porthole_proto::exercise::texts),
        ("nodepass", porthole_nodepass::wire::exercise::all),
    ];
    for (name, exercise) in targets {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            exercise(&data);
            n += 1;
        }
        assert!(n > 0, "empty corpus {}", dir.display());
    }
}
