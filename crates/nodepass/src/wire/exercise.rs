//! Every NodePass wire decoder applied to arbitrary input (fuzz targets and the corpus
//! regression test). Nothing here may panic.

/// URL, handshake request and response, and signal lines.
pub fn all(data: &[u8]) {
    let _ = super::http::parse_request(data);
    let _ = super::http::parse_response(data);
    let _ = super::udp_frame::looks_framed(data);
    let _ = super::block::BlockSet::parse("123").map(|b| b.check(data));
    let mut frames = super::udp_frame::Decoder::default();
    frames.push(data);
    while let Some(d) = frames.next_datagram() {
        assert!(!d.is_empty());
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.parse::<super::url::NodepassUrl>();
    for key in ["", "k", "secretkey"] {
        if let Ok(sig) = super::signal::Signal::decode(s, key) {
            assert_eq!(
                super::signal::Signal::decode(&sig.encode(key), key).ok(),
                Some(sig)
            );
        }
    }
    let _ = super::parse_id(s);
    let _ = super::Fingerprint::parse(s);
}
