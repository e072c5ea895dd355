//! Relaying a stream into a channel on a task of its own: for a reader that
//! wants a channel (the core's output followers), and for a reply stream
//! that must let go of its source as soon as its reader goes away, even
//! while the source is quiet (an event watch can wait for hours).

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

/// An item to relay: more may follow, or it is the last.
pub(crate) enum Relayed<T> {
    More(T),
    Last(T),
}

impl<T> Relayed<T> {
    /// The same place in the stream, holding `f` of the item.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Relayed<U> {
        match self {
            Relayed::More(t) => Relayed::More(f(t)),
            Relayed::Last(t) => Relayed::Last(f(t)),
        }
    }
}

/// An item of a stream of results, which an error ends.
pub(crate) fn ends_on_error<O, E>(item: Result<O, E>) -> Relayed<Result<O, E>> {
    match item {
        Ok(_) => Relayed::More(item),
        Err(_) => Relayed::Last(item),
    }
}

/// Sends each item of `source` into the returned channel (of `capacity`)
/// until the source ends, an item is the last, or the receiver is dropped;
/// then drops the source.
pub(crate) fn relay<T: Send + 'static>(
    source: impl Stream<Item = Relayed<T>> + Send + 'static,
    capacity: usize,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        loop {
            let next = tokio::select! {
                next = source.next() => next,
                () = tx.closed() => return,
            };
            let (item, last) = match next {
                None => return,
                Some(Relayed::More(item)) => (item, false),
                Some(Relayed::Last(item)) => (item, true),
            };
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_until_the_last_item_and_lets_go_of_a_quiet_source_when_its_reader_goes() {
        let items = [Relayed::More(1), Relayed::Last(2), Relayed::More(3)];
        let mut rx = relay(tokio_stream::iter(items), 4);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, [1, 2], "nothing after the last");

        let (held_tx, held_rx) = mpsc::channel::<Relayed<u8>>(1);
        let rx = relay(tokio_stream::wrappers::ReceiverStream::new(held_rx), 4);
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(5), held_tx.closed())
            .await
            .expect("the source is dropped once its reader went away");
    }
}
