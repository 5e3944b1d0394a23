//! Just enough HTTP/1.1 (RFC 9112) for UPnP IGD, sans-IO: build a request,
//! parse the response from the bytes the driver reads off the TCP
//! connection. Every request says `Connection: close`, so the server ends
//! the response by closing; `Content-Length` and chunked bodies end it
//! sooner.
//!
//! Gateways are small embedded servers with a history of odd HTTP, so the
//! parser accepts bare LF line ends and any header case, and bounds
//! everything: [`MAX_RESPONSE`] bytes in all.

use std::fmt;
use std::net::SocketAddr;

/// The most bytes a response may take (headers and body): a device
/// description is a few kilobytes, a SOAP answer less.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// An `http://` URL whose host is an IP literal (a gateway on the LAN
/// names itself by address; nothing here resolves names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    /// Address and port (80 when the URL gives none).
    pub addr: SocketAddr,
    /// The path and query, starting with `/`.
    pub path: String,
}

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable URL {url:?}: {why}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Url {
    /// Parse an absolute `http://IP[:PORT]/path` URL.
    pub fn parse(url: &str) -> Result<Url, UrlError> {
        let err = |why| UrlError {
            url: url.chars().take(200).collect(),
            why,
        };
        let rest = url
            .trim()
            .strip_prefix("http://")
            .or_else(|| url.trim().strip_prefix("HTTP://"))
            .ok_or_else(|| err("not http://"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // No user info: a gateway never needs it, and it hides the host.
        if authority.contains('@') {
            return Err(err("user info in the URL"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(|| err("bad IPv6 literal"))?;
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| err("bad port"))?),
            };
            (h, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let ip = host
            .parse()
            .map_err(|_| err("the host is not an IP address"))?;
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse::<u16>().map_err(|_| err("bad port"))?,
        };
        if port == 0 {
            return Err(err("port 0"));
        }
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(err("control characters or spaces in the path"));
        }
        Ok(Url {
            addr: SocketAddr::new(ip, port),
            path,
        })
    }

    /// `reference` (absolute, or relative as UPnP's controlURL often is)
    /// resolved against this URL (RFC 3986 §5.2, the cases devices use).
    pub fn join(&self, reference: &str) -> Result<Url, UrlError> {
        let r = reference.trim();
        if r.len() > 7 && r[..7].eq_ignore_ascii_case("http://") {
            return Url::parse(r);
        }
        let path = if r.starts_with('/') {
            r.to_string()
        } else {
            let dir = match self.path.split(['?']).next().unwrap_or("/").rfind('/') {
                Some(i) => &self.path[..=i],
                None => "/",
            };
            format!("{dir}{r}")
        };
        Url::parse(&format!("http://{}{path}", self.addr))
    }

    /// The `Host` header's value.
    fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

/// A GET of `url`.
pub fn get(url: &Url) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: natkit UPnP/1.1\r\n\r\n",
        url.path,
        url.host()
    )
    .into_bytes()
}

/// A POST of an XML `body` to `url` with `extra` headers (SOAPAction).
pub fn post_xml(url: &Url, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut s = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: natkit UPnP/1.1\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nContent-Length: {}\r\n",
        url.path,
        url.host(),
        body.len()
    );
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// What is wrong with a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Over [`MAX_RESPONSE`] bytes.
    #[error("response over {MAX_RESPONSE} bytes")]
    TooLarge,
    /// Not HTTP, or broken framing.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The connection ended before the response did.
    #[error("the connection closed in the middle of the response")]
    Truncated,
}

/// How the body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// An HTTP response arriving in pieces: [`ResponseParser::push`] what the
/// connection gives, [`ResponseParser::finish`] when it closes.
#[derive(Debug, Default)]
pub struct ResponseParser {
    buf: Vec<u8>,
    done: bool,
}

impl ResponseParser {
    /// A parser with nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// More bytes: the response once whole.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Response>, HttpError> {
        if self.done {
            return Ok(None);
        }
        if self.buf.len() + data.len() > MAX_RESPONSE {
            self.done = true;
            return Err(HttpError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        let r = parse(&self.buf, false);
        if !matches!(r, Ok(None)) {
            self.done = true;
        }
        r
    }

    /// The connection closed: the response, if the bytes so far make one.
    pub fn finish(&mut self) -> Result<Response, HttpError> {
        if self.done {
            return Err(HttpError::Truncated);
        }
        self.done = true;
        parse(&self.buf, true)?.ok_or(HttpError::Truncated)
    }

    /// Whether a response (or an error) was given already.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// The end of the header block and where the body starts.
fn header_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// The response in `b`, if whole (`closed`: no more bytes will come).
fn parse(b: &[u8], closed: bool) -> Result<Option<Response>, HttpError> {
    let Some((end, body_at)) = header_end(b) else {
        return if closed {
            Err(HttpError::Truncated)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&b[..end]).map_err(|_| HttpError::Malformed("headers"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(HttpError::Malformed("status code"))?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if k.eq_ignore_ascii_case("content-length") && !matches!(framing, Framing::Chunked) {
            let n = v
                .parse::<usize>()
                .map_err(|_| HttpError::Malformed("Content-Length"))?;
            if n > MAX_RESPONSE {
                return Err(HttpError::TooLarge);
            }
            framing = Framing::Length(n);
        }
    }
    let body = &b[body_at..];
    match framing {
        Framing::Length(n) if body.len() >= n => Ok(Some(Response {
            status,
            body: body[..n].to_vec(),
        })),
        Framing::Length(_) if closed => Err(HttpError::Truncated),
        Framing::Length(_) => Ok(None),
        Framing::Close if closed => Ok(Some(Response {
            status,
            body: body.to_vec(),
        })),
        Framing::Close => Ok(None),
        Framing::Chunked => match dechunk(body)? {
            Some(body) => Ok(Some(Response { status, body })),
            None if closed => Err(HttpError::Truncated),
            None => Ok(None),
        },
    }
}

/// A chunked body (RFC 9112 §7.1), if whole.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.iter().position(|&c| c == b'\n') else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[..nl]).map_err(|_| HttpError::Malformed("chunk"))?;
        // Chunk extensions after ';' are ignored.
        let size = line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        if n > MAX_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        b = &b[nl + 1..];
        if n == 0 {
            // Trailers are not waited for: the body is complete.
            return Ok(Some(out));
        }
        if b.len() < n {
            return Ok(None);
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n..];
        // The CRLF (or LF) after the data.
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        } else if b.starts_with(b"\n") {
            b = &b[1..];
        } else if b.is_empty() || b == b"\r" {
            return Ok(None);
        } else {
            return Err(HttpError::Malformed("chunk end"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = Url::parse("http://198.51.100.1:5000/rootDesc.xml").unwrap();
        assert_eq!(u.addr, "198.51.100.1:5000".parse().unwrap());
        assert_eq!(u.path, "/rootDesc.xml");
        assert_eq!(u.to_string(), "http://198.51.100.1:5000/rootDesc.xml");
        let u6 = Url::parse("http://[2001:db8::1]/a/b.xml?x=1").unwrap();
        assert_eq!(u6.addr, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(u6.path, "/a/b.xml?x=1");
        assert_eq!(
            Url::parse("http://192.0.2.1").unwrap().path,
            "/",
            "no path is the root"
        );
        // Relative, absolute-path and absolute references.
        let base = Url::parse("http://192.0.2.1:1900/igd/desc.xml").unwrap();
        assert_eq!(base.join("ctl/IPConn").unwrap().path, "/igd/ctl/IPConn");
        assert_eq!(base.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(
            base.join("http://192.0.2.1:5000/x").unwrap().addr.port(),
            5000
        );
        for bad in [
            "https://192.0.2.1/",
            "http://router.local/desc.xml",
            "http://192.0.2.1:0/",
            "http://192.0.2.1:99999/",
            "http://user@192.0.2.1/",
            "http://[2001:db8::1/",
            "http://192.0.2.1/a b",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_http_1_1_with_close() {
        let u = Url::parse("http://192.0.2.1:5000/ctl/IPConn").unwrap();
        let g = String::from_utf8(get(&u)).unwrap();
        assert!(g.starts_with("GET /ctl/IPConn HTTP/1.1\r\nHost: 192.0.2.1:5000\r\n"));
        assert!(g.contains("Connection: close\r\n") && g.ends_with("\r\n\r\n"));
        let p = String::from_utf8(post_xml(&u, &[("SOAPAction", "\"x#y\"")], "<a/>")).unwrap();
        assert!(p.starts_with("POST /ctl/IPConn HTTP/1.1\r\n"));
        assert!(p.contains("Content-Length: 4\r\n") && p.contains("SOAPAction: \"x#y\"\r\n"));
        assert!(p.ends_with("\r\n\r\n<a/>"));
    }

    fn whole(text: &[u8]) -> Result<Option<Response>, HttpError> {
        ResponseParser::new().push(text)
    }

    #[test]
    fn content_length_bodies_end_without_the_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nCONTENT-LENGTH: 5\r\n\r\nhello";
        // Byte by byte: nothing until the last one.
        let mut p = ResponseParser::new();
        for (i, b) in r.iter().enumerate() {
            let got = p.push(&[*b]).unwrap();
            assert_eq!(got.is_some(), i == r.len() - 1, "at byte {i}");
            if let Some(resp) = got {
                assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello"[..]));
            }
        }
        assert!(p.is_done());
        // Bare LF line ends (some gateways).
        let r = whole(b"HTTP/1.0 500 Internal Server Error\nContent-Length: 2\n\nok").unwrap();
        assert_eq!(r.unwrap().status, 500);
    }

    #[test]
    fn close_delimited_and_chunked_bodies() {
        let mut p = ResponseParser::new();
        assert_eq!(p.push(b"HTTP/1.1 200 OK\r\n\r\n<root/>").unwrap(), None);
        let r = p.finish().unwrap();
        assert_eq!(r.body, b"<root/>");

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n<roo\r\n3\r\nt/>\r\n0\r\n\r\n";
        let mut p = ResponseParser::new();
        assert_eq!(p.push(&chunked[..60]).unwrap(), None);
        let r = p.push(&chunked[60..]).unwrap().unwrap();
        assert_eq!(r.body, b"<root/>");
    }

    #[test]
    fn bad_and_cut_responses_are_errors() {
        assert_eq!(
            whole(b"SSH-2.0-dropbear\r\n\r\n"),
            Err(HttpError::Malformed("status line"))
        );
        assert_eq!(
            whole(b"HTTP/1.1 abc OK\r\n\r\n"),
            Err(HttpError::Malformed("status code"))
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::Malformed("Content-Length"))
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::Malformed("chunk size"))
        );
        let mut p = ResponseParser::new();
        p.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        assert_eq!(p.finish(), Err(HttpError::Truncated));
        let mut p = ResponseParser::new();
        p.push(b"HTTP/1.1 200").unwrap();
        assert_eq!(p.finish(), Err(HttpError::Truncated));
        // Size bounds: a claimed length, and bytes actually sent.
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HttpError::TooLarge)
        );
        let mut p = ResponseParser::new();
        p.push(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(p.push(&vec![b'x'; MAX_RESPONSE]), Err(HttpError::TooLarge));
        // Nothing more after an answer.
        assert_eq!(p.push(b"more"), Ok(None));
    }
}
