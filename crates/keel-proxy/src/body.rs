//! The body of an answer on its way back to the client.
//!
//! A backend's body is streamed through as it arrives; once it has been read to the end
//! its connection goes back to the backend's pool, and if the client leaves before the
//! end the connection is closed instead (its rest would have to be read and thrown away).
//! The request also stays counted as in flight until then, which is what least-request
//! balancing weighs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::backend::{Backend, InFlight, UpBody};

/// What the proxy answers with: a backend's body, or one of its own.
pub type ProxyBody = Either<Returning, Full<Bytes>>;

/// A backend's answer body that hands its connection back when read to the end.
#[derive(Debug)]
pub struct Returning {
    inner: Incoming,
    conn: Option<(SendRequest<UpBody>, Arc<Backend>)>,
    _in_flight: InFlight,
}

impl Returning {
    pub fn new(inner: Incoming, sender: SendRequest<UpBody>, in_flight: InFlight) -> Returning {
        let backend = Arc::clone(&in_flight.0);
        let mut body = Returning {
            inner,
            conn: Some((sender, backend)),
            _in_flight: in_flight,
        };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some((sender, backend)) = self.conn.take() {
            backend.checkin(sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            // A broken body: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
