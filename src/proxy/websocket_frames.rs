//! WebSocket frame boundaries in a byte stream (RFC 6455 §5.2), so that
//! valet can add a close frame between two frames without corrupting
//! either side's stream. Only headers are read (opcode, mask bit, length);
//! payloads are counted, never parsed or unmasked.

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Where one direction of a session stands.
#[derive(Debug, Clone)]
pub struct Frames {
    state: State,
    /// The opcode of the frame being read.
    opcode: u8,
    /// A close frame (opcode 8) has passed whole.
    close_seen: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Reading a header: `have` bytes of it so far (0: at a boundary).
    Header { buf: [u8; MAX_HEADER], have: usize },
    /// Inside a payload: `left` bytes to its end.
    Payload { left: u64 },
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            state: State::default_header(),
            opcode: 0,
            close_seen: false,
        }
    }
}

/// A header's full length once its first two bytes are known.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length a complete header announces.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u16::from_be_bytes([h[2], h[3]]) as u64,
        127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        n => n as u64,
    }
}

impl Frames {
    /// Between two frames: a close frame may go here.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Whether a whole close frame has passed: the peer's answer to ours.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Follows `data` through the stream. With `stop_at_boundary`, stops
    /// at the first boundary reached (at once if already at one); returns
    /// how many bytes of `data` were followed.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        loop {
            if stop_at_boundary && self.at_boundary() {
                return i;
            }
            if i == data.len() {
                return i;
            }
            match &mut self.state {
                State::Payload { left } => {
                    let n = (*left).min((data.len() - i) as u64) as usize;
                    *left -= n as u64;
                    i += n;
                    if *left == 0 {
                        self.state = State::default_header();
                        self.close_seen |= self.opcode == 0x8;
                    }
                }
                State::Header { buf, have } => {
                    buf[*have] = data[i];
                    *have += 1;
                    i += 1;
                    if *have >= 2 && *have == header_len(buf[1]) {
                        let len = payload_len(&buf[..*have]);
                        self.opcode = buf[0] & 0x0f;
                        if len == 0 {
                            self.state = State::default_header();
                            self.close_seen |= self.opcode == 0x8;
                        } else {
                            self.state = State::Payload { left: len };
                        }
                    }
                }
            }
        }
    }
}

impl State {
    fn default_header() -> State {
        State::Header {
            buf: [0; MAX_HEADER],
            have: 0,
        }
    }
}

/// A close frame with status 1001 (going away, RFC 6455 §7.4.1), as a
/// server sends it: unmasked.
pub const GOING_AWAY_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

/// The same close frame as a client must send it (§5.1, §5.3): masked
/// with `key`.
pub fn going_away_to_server(key: [u8; 4]) -> [u8; 8] {
    let body = [0x03, 0xe9];
    [
        0x88,
        0x80 | 0x02,
        key[0],
        key[1],
        key[2],
        key[3],
        body[0] ^ key[0],
        body[1] ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as tungstenite would write it: `masked` with a fixed key.
    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [1, 2, 3, 4];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn boundaries_are_found_in_every_length_form_and_split() {
        let frames = [
            frame(0x1, b"hi", false),
            frame(0x2, &[7; 200], true),
            frame(0x2, &[9; 70_000], false),
            frame(0x9, b"", true),
            frame(0x0, &[1; 125], false),
        ];
        let stream: Vec<u8> = frames.concat();
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |at, f| {
                *at += f.len();
                Some(*at)
            })
            .collect();
        // Fed in chunks of every size from 1 to 17, the boundaries seen are
        // exactly the frames' ends.
        for chunk in 1..=17 {
            let mut t = Frames::default();
            let mut seen = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let end = (at + chunk).min(stream.len());
                let mut piece = &stream[at..end];
                while !piece.is_empty() {
                    // Step off a boundary, then run to the next one.
                    let n = t.advance(&piece[..1], false);
                    let m = n + t.advance(&piece[n..], true);
                    at += m;
                    piece = &piece[m..];
                    if t.at_boundary() {
                        seen.push(at);
                    }
                }
            }
            assert_eq!(seen, ends, "chunk {chunk}");
        }
    }

    #[test]
    fn stopping_at_a_boundary_takes_nothing_past_it() {
        let a = frame(0x2, &[1; 300], true);
        let b = frame(0x1, b"next", true);
        let mut t = Frames::default();
        // Midway through the first frame, a chunk that runs into the next.
        assert_eq!(t.advance(&a[..100], false), 100);
        assert!(!t.at_boundary());
        let mut rest = a[100..].to_vec();
        rest.extend_from_slice(&b);
        assert_eq!(t.advance(&rest, true), a.len() - 100);
        assert!(t.at_boundary());
        assert_eq!(t.advance(&b, true), 0);
    }

    #[test]
    fn the_close_frames_say_1001() {
        assert_eq!(GOING_AWAY_TO_CLIENT, frame(0x8, &[0x03, 0xe9], false)[..]);
        let masked = going_away_to_server([1, 2, 3, 4]);
        assert_eq!(masked[..], frame(0x8, &[0x03, 0xe9], true)[..]);
        let mut t = Frames::default();
        assert_eq!(t.advance(&masked, true), 0);
        assert_eq!(t.advance(&masked[..7], false), 7);
        assert!(!t.close_seen(), "seen before its payload ended");
        assert_eq!(t.advance(&masked[7..], false), 1);
        assert!(t.at_boundary() && t.close_seen());
        // Other frames are not closes.
        let mut t = Frames::default();
        t.advance(&frame(0x1, b"x", true), false);
        t.advance(&frame(0x9, b"", false), false);
        assert!(!t.close_seen());
    }
}
