//! Blob bodies on the wire: a stored blob streamed step by step (by hand to the socket on plain
//! HTTP, so a slow client holds no buffer; through the response writer otherwise), and a
//! pull-through relay. Each step's memory comes from the budget in `buffers`.

use super::buffers::{Lease, Pacer, Way};
use super::errors::ApiError;
use super::{App, Sent};
use crate::storage::{BlobInfo, ChunkHint, StoreError};
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// Why a blob transfer stopped early: the client's connection, or the store.
enum Stop {
    Client(std::io::Error),
    Store(StoreError),
}

/// The status line and headers of a blob response of `len` bytes, written by hand because
/// the body goes straight onto the connection; `closes`: the connection ends after it.
fn response_head(
    status: u16,
    len: u64,
    headers: &[(&'static str, String)],
    closes: bool,
) -> String {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        _ => "",
    };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nServer: outpost\r\nContent-Length: {len}\r\n");
    if closes {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Reads up to `max` bytes of `blob` from `at` into `buf`, no further than the end of the chunk
/// `hint` says holds `at` (a step reads one chunk page, and a sealed chunk is opened once): one
/// store call, in one of the turns the budget allows.
fn read_step(
    app: &App,
    (blob, hint): (BlobInfo, &mut ChunkHint),
    at: u64,
    max: u64,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let max = hint
        .left_in_chunk(blob, at)
        .map_or(max, |left| left.min(max)) as usize;
    let mut turn = app.buffers.turn(Way::Read);
    if blob.domain == 0 || buf.capacity() > app.store.chunk_payload() {
        return app.store.read_blob_on(blob, at, max, buf, hint);
    }
    // A sealed chunk opens whole: a small step opens it in the turn's scratch and keeps its
    // part, so that the small buffer stays small.
    let scratch = turn.scratch();
    app.store.read_blob_on(blob, at, max, scratch, hint)?;
    buf.clear();
    buf.extend_from_slice(scratch);
    Ok(())
}

/// Sends only a response head announcing `len` bytes (for a `HEAD`).
pub(super) fn head(
    mut req: Request,
    status: u16,
    headers: &[(&'static str, String)],
    len: u64,
) -> Sent {
    let head = response_head(status, len, headers, req.closes_connection());
    let mut w = req.into_writer();
    if let Err(e) = w.write_all(head.as_bytes()).and_then(|()| w.flush()) {
        log::debug!("response not delivered: {e}");
    }
    Sent { status, bytes: 0 }
}

/// Streams a blob straight onto the connection: header, then one store read and one socket
/// write per step (tiny_http's own body copy goes 8 KiB at a time). The first step is read
/// before the header is written, so a store failure there is still answered properly (`Err`);
/// a failure after that shuts the connection down, so the client sees a truncated transfer
/// rather than waiting for bytes that will never come. `Ok`: the body bytes sent.
pub(super) fn blob(
    app: &App,
    mut req: Request,
    status: u16,
    headers: &[(&'static str, String)],
    (blob, start, len): (BlobInfo, u64, u64),
) -> Result<u64, Box<(Request, ApiError)>> {
    let head = response_head(status, len, headers, req.closes_connection());
    let with_body = *req.method() != Method::Head && len > 0;
    // Plaintext over plain HTTP: the body goes to the socket by hand (see `send_raw`).
    let raw = if blob.domain == 0 {
        req.raw_body()
    } else {
        None
    };
    let mut pacer = app.buffers.pacer();
    let mut hint = ChunkHint::default();
    let first = if with_body {
        let mut lease = if raw.is_some() {
            pacer.lease_brief()
        } else {
            pacer.lease()
        };
        let step = (lease.step as u64).min(len);
        if let Err(e) = read_step(app, (blob, &mut hint), start, step, &mut lease.buf) {
            return Err(Box::new((req, ApiError::from(e))));
        }
        Some(lease)
    } else {
        None
    };
    let abort = req.abort_handle();
    let url = req.url().to_owned();
    let mut w = req.into_writer();
    let (mut at, end) = (start, start + len);
    let result = (|| -> std::io::Result<()> {
        w.write_all(head.as_bytes())?;
        let Some(first) = first else {
            return w.flush();
        };
        if first.buf.is_empty() {
            return Err(std::io::Error::other("blob ended early"));
        }
        let sent = match raw {
            Some(raw) => {
                w.flush()?;
                send_raw(app, raw, (blob, &mut hint), first, &mut at, end)
            }
            None => send_paced(
                app,
                &mut w,
                (&mut pacer, first),
                (blob, &mut hint),
                &mut at,
                end,
            ),
        };
        match sent {
            Ok(()) if at >= end => w.flush(),
            Ok(()) => Err(std::io::Error::other("blob ended early")),
            Err(Stop::Client(e)) => Err(e),
            Err(Stop::Store(StoreError::Integrity(m))) => {
                // Headers are out: the connection is cut, and the bad chunk unsent.
                log::error!("integrity error serving {url}: {m}");
                Err(std::io::Error::other(format!(
                    "integrity check failed: {m}"
                )))
            }
            Err(Stop::Store(e)) => Err(std::io::Error::other(e)),
        }
    })();
    if let Err(e) = result {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted) {
            log::debug!("client left blob {} at byte {at} of {end}", blob.id);
        } else {
            log::warn!("blob {} cut short at byte {at} of {end}: {e}", blob.id);
        }
        if let Some(a) = abort {
            a.abort();
        }
    }
    Ok(at - start)
}

/// How long a step's buffer is kept for a client whose socket is full: one that keeps up
/// drains it by then.
const HOLD: Duration = Duration::from_millis(20);

/// Sends `[at, end)` of a plaintext blob to the socket by hand, the first step's bytes in
/// `first` already. A step is read into one of the budget's chunk-sized buffers and the socket
/// takes what it can at once; when it is full, the buffer is kept for a moment (`HOLD`: a
/// client that keeps up drains it by then) and then given back, and the socket is waited for
/// with no buffer held (what it did not take is read again, from redb's page cache, when it
/// can take more). So a slow client holds no buffer, and a few buffers serve every download.
/// While few downloads run, a client that takes a whole step at once gets the rest read ahead
/// on a helper thread, as long as it keeps taking it (two cores then share the work).
fn send_raw<'a>(
    app: &'a App,
    mut raw: tiny_http::RawBody,
    (blob, hint): (BlobInfo, &mut ChunkHint),
    first: Lease<'a>,
    at: &mut u64,
    end: u64,
) -> Result<(), Stop> {
    // A socket that says it has room and then takes nothing (memory pressure) is left alone
    // a moment rather than asked again at once.
    const PAUSE: Duration = Duration::from_millis(20);
    let mut pacer = app.buffers.pacer();
    let (mut lease, mut sent) = (Some(first), 0);
    // A client that took a whole step at once is offered the rest with reading ahead (once).
    let mut may_read_ahead = true;
    while *at < end {
        if app.stopping() {
            return Err(Stop::Client(std::io::Error::other("shutting down")));
        }
        let step = match &mut lease {
            Some(l) => l,
            None => {
                raw.wait_room(None).map_err(Stop::Client)?;
                let mut l = pacer.lease_brief();
                let step = (l.step as u64).min(end - *at);
                read_step(app, (blob, &mut *hint), *at, step, &mut l.buf).map_err(Stop::Store)?;
                if l.buf.is_empty() {
                    break;
                }
                sent = 0;
                lease.insert(l)
            }
        };
        let n = raw.send_some(&step.buf[sent..]).map_err(Stop::Client)?;
        let whole = sent == 0 && n == step.buf.len();
        (sent, *at) = (sent + n, *at + n as u64);
        if n == 0 {
            lease = None;
            std::thread::sleep(PAUSE);
            raw.waited(PAUSE);
        } else if sent == step.buf.len() || !raw.wait_room(Some(HOLD)).map_err(Stop::Client)? {
            lease = None;
        }
        if whole && may_read_ahead && *at < end && few_downloads() {
            may_read_ahead = false;
            // (the step's buffer went back above: the two for reading ahead may be free)
            let send = |chunk: &[u8], at: &mut u64| send_whole_raw(&mut raw, chunk, at);
            if let Some(ahead) = read_ahead_while_sending(app, (blob, *hint), at, end, send) {
                ahead?;
                if *at < end {
                    log::debug!(
                        "blob {}: client slowed at byte {}; no read-ahead",
                        blob.id,
                        *at
                    );
                }
            }
        }
    }
    Ok(())
}

/// True while few downloads run: reading ahead holds two chunk-sized buffers and a thread for
/// the whole transfer, which pays when the cores are otherwise idle, not in a crowd (where
/// the budget's buffers serve more transfers lent a step at a time).
fn few_downloads() -> bool {
    const FEW: u64 = 2;
    crate::metrics::get().active(crate::metrics::Direction::Download) <= FEW
}

/// Sends `chunk` to the socket by hand while the client keeps taking it (`at` moves on by
/// what was sent); false if it stopped taking it for `HOLD`: it is no longer fast.
fn send_whole_raw(raw: &mut tiny_http::RawBody, chunk: &[u8], at: &mut u64) -> Result<bool, Stop> {
    let mut sent = 0;
    while sent < chunk.len() {
        let n = raw.send_some(&chunk[sent..]).map_err(Stop::Client)?;
        (sent, *at) = (sent + n, *at + n as u64);
        if n == 0 || sent < chunk.len() && !raw.wait_room(Some(HOLD)).map_err(Stop::Client)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends `[at, end)` of a blob through the response writer, the first step's bytes in
/// `lease` already: each step in a buffer from `pacer`; a sealed blob, for a client that keeps
/// up, is read and opened ahead on a helper thread.
fn send_paced<'a>(
    app: &'a App,
    w: &mut impl Write,
    (pacer, lease): (&mut Pacer<'a>, Lease<'a>),
    (blob, hint): (BlobInfo, &mut ChunkHint),
    at: &mut u64,
    end: u64,
) -> Result<(), Stop> {
    send_step(w, pacer, lease, at).map_err(Stop::Client)?;
    if blob.domain != 0 && *at < end && pacer.fast() {
        let write = |chunk: &[u8], at: &mut u64| {
            w.write_all(chunk).map_err(Stop::Client)?;
            *at += chunk.len() as u64;
            Ok(true)
        };
        if let Some(ahead) = read_ahead_while_sending(app, (blob, *hint), at, end, write) {
            return ahead;
        }
    }
    // One thread: read a step, write it.
    while *at < end {
        if app.stopping() {
            return Err(Stop::Client(std::io::Error::other("shutting down")));
        }
        let mut lease = pacer.lease();
        let step = (lease.step as u64).min(end - *at);
        read_step(app, (blob, &mut *hint), *at, step, &mut lease.buf).map_err(Stop::Store)?;
        if lease.buf.is_empty() {
            break;
        }
        send_step(w, pacer, lease, at).map_err(Stop::Client)?;
    }
    Ok(())
}

/// Sends the rest of a blob with a helper thread reading (and for a sealed blob opening)
/// chunks ahead while this one sends them with `send` (reading costs about as much CPU as
/// sending), in two chunk-sized buffers of the budget; None, with nothing sent, if two are not
/// free now or no thread can be had. `send` moves `at` on by what it sent, and says false to
/// stop early (the caller goes on from `at` step by step).
fn read_ahead_while_sending(
    app: &App,
    (blob, hint): (BlobInfo, ChunkHint),
    at: &mut u64,
    end: u64,
    mut send: impl FnMut(&[u8], &mut u64) -> Result<bool, Stop>,
) -> Option<Result<(), Stop>> {
    // The leases live until the end: the budget counts their buffers while they circulate.
    let mut leases = [app.buffers.take_chunk()?, app.buffers.take_chunk()?];
    let step = app.store.chunk_payload() as u64;
    std::thread::scope(|scope| {
        let (full, filled) = mpsc::sync_channel::<Result<Vec<u8>, StoreError>>(1);
        let (give_back, spare) = mpsc::channel::<Vec<u8>>();
        for l in &mut leases {
            let _ = give_back.send(std::mem::take(&mut l.buf));
        }
        let from = *at;
        std::thread::Builder::new()
            .name("read-ahead".into())
            .stack_size(256 << 10)
            .spawn_scoped(scope, move || {
                read_ahead(app, (blob, hint), from, end, step, &full, &spare)
            })
            .ok()?;
        let sent = (|| {
            for chunk in &filled {
                let chunk = chunk.map_err(Stop::Store)?;
                if !send(&chunk, at)? {
                    break;
                }
                let _ = give_back.send(chunk);
            }
            Ok(())
        })();
        // The reader stops at its next step when the channels go.
        drop((filled, give_back));
        Some(sent)
    })
}

/// Reads `blob` from `from` to `end` in `step`-byte pieces into the buffers of `spare` (the
/// two it starts with, then each the receiver gives back) and sends them down `full`; stops at
/// the first error (sent too), when the receiver goes, or when the registry is stopping.
fn read_ahead(
    app: &App,
    (blob, mut hint): (BlobInfo, ChunkHint),
    from: u64,
    end: u64,
    step: u64,
    full: &mpsc::SyncSender<Result<Vec<u8>, StoreError>>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    let mut at = from;
    while at < end && !app.stopping() {
        let Ok(mut buf) = spare.recv() else {
            return;
        };
        match read_step(app, (blob, &mut hint), at, step.min(end - at), &mut buf) {
            Ok(()) if buf.is_empty() => return,
            Ok(()) => {
                at += buf.len() as u64;
                if full.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        }
    }
}

/// Writes one step of a blob to the client (`at` moves on); the pacer learns how fast the
/// client took it.
fn send_step<'a>(
    w: &mut impl Write,
    pacer: &mut Pacer<'a>,
    lease: Lease<'a>,
    at: &mut u64,
) -> std::io::Result<()> {
    let t = Instant::now();
    w.write_all(&lease.buf)?;
    let n = lease.buf.len();
    *at += n as u64;
    pacer.done(lease, n, t.elapsed());
    Ok(())
}

/// Sends a blob as it arrives from a pull-through cache's upstream, storing each piece
/// before passing it on, in a small buffer of its own (its pace is the upstream's). If the
/// client goes, the fetch still completes into the store (other clients may be waiting for
/// it); the blob is committed only if its digest verifies.
pub(super) fn relay(
    app: &App,
    mut req: Request,
    status: u16,
    headers: &[(&'static str, String)],
    mut relay: crate::mirror::cache::Relay,
) -> Sent {
    let head_only = *req.method() == Method::Head;
    let size = relay.size;
    let head = response_head(status, size, headers, req.closes_connection());
    let abort = req.abort_handle();
    let mut w = Some(req.into_writer());
    let mut sent = 0u64;
    let mut client = |bytes: &[u8], body: bool| {
        if let Some(out) = &mut w {
            if out.write_all(bytes).is_err() {
                w = None;
            } else if body {
                sent += bytes.len() as u64;
            }
        }
    };
    client(head.as_bytes(), false);
    let mut hasher = crate::digest::Hasher::new(relay.digest.algorithm());
    let mut at = 0u64;
    let mut lease = app.buffers.pacer().lease();
    let buf = &mut lease.buf;
    buf.resize(lease.step, 0);
    let result = loop {
        if app.stopping() {
            break Err("shutting down".to_owned());
        }
        match relay.next(&app.store, at, &mut hasher, buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if !head_only {
                    client(&buf[..n], true);
                }
                at += n as u64;
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let digest = relay.digest.clone();
    let outcome = result.and_then(|()| relay.finish(&app.cache, &app.store, at, hasher));
    match outcome {
        Ok(()) => {
            if let Some(out) = &mut w {
                let _ = out.flush();
            }
        }
        Err(e) => {
            log::warn!("pull-through of blob {digest}: {e}");
            if let Some(a) = abort {
                a.abort();
            }
        }
    }
    Sent {
        status,
        bytes: sent,
    }
}
