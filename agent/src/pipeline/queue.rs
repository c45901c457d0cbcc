//! The span builder -> export stage queue, bounded in spans.
//!
//! Spans travel in chunks of any size (a few at low rates, up to `MAX_CHUNK` under load), so a
//! channel bounded in chunks bounds nothing useful: 32 chunks of 3 spans filled it while an
//! export attempt blocked, and spans were dropped with the queue 1 % full. Here the bound is a
//! count of spans shared by both ends: the builder takes room for a chunk before sending it,
//! and the export stage gives the room back when spans leave it (exported, or counted as
//! `export_failed`). Spans in the channel, in the stage's batch queue and in its retry batch
//! all count.
//!
//! Overflow policy: drop the newest, with a reserve for what matters. Ordinary spans may fill
//! the queue up to three quarters; the last quarter is kept for important ones (errors,
//! failed connects, spans an always-keep rule kept, such as the slow ones), so a flood of
//! ordinary spans cannot push them out. A chunk that does not fit is cut to the room left;
//! the sender reports how many spans it gave up so that they are counted (`queue_full`).
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// The sending half (the span builder).
pub struct QueueTx<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// The receiving half (the export stage).
pub struct QueueRx<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// What became of a chunk offered to the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub queued: usize,
    /// Dropped because the queue was full (the newest of the chunk).
    pub full: usize,
    /// Dropped because the export stage is gone.
    pub closed: usize,
}

/// A queue holding at most `capacity` items (at least 1).
pub fn bounded<T>(capacity: usize) -> (QueueTx<T>, QueueRx<T>) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        QueueTx {
            tx,
            room: room.clone(),
            capacity,
        },
        QueueRx { rx, room, capacity },
    )
}

impl<T> QueueTx<T> {
    /// Queues as much of `items` as there is room for, never waiting; all are important.
    pub fn send(&self, items: Vec<T>) -> Sent {
        let n = items.len();
        self.send_prioritized(items, n)
    }

    /// Like [`send`](Self::send), where the first `important` items may use the whole queue
    /// and the rest only the room above the reserve (a quarter of the capacity).
    pub fn send_prioritized(&self, mut items: Vec<T>, important: usize) -> Sent {
        let offered = items.len();
        let important = important.min(offered);
        let room = self.room.available_permits();
        let take_important = important.min(room);
        let ordinary_room = room
            .saturating_sub(self.capacity / 4)
            .saturating_sub(take_important);
        let take_ordinary = (offered - important).min(ordinary_room);
        let fit = take_important + take_ordinary;
        if fit == 0 {
            return Sent {
                full: offered,
                ..Sent::default()
            };
        }
        if fit < offered {
            // The important ones that fit, then the oldest ordinary ones that fit.
            let mut idx = 0;
            items.retain(|_| {
                idx += 1;
                let i = idx - 1;
                if i < important {
                    i < take_important
                } else {
                    i - important < take_ordinary
                }
            });
        }
        // One sender: the room seen above cannot shrink before this.
        let Ok(permit) = self.room.try_acquire_many(fit as u32) else {
            return Sent {
                full: offered,
                ..Sent::default()
            };
        };
        permit.forget();
        match self.tx.send(items) {
            Ok(()) => Sent {
                queued: fit,
                full: offered - fit,
                closed: 0,
            },
            Err(_) => {
                self.room.add_permits(fit);
                Sent {
                    queued: 0,
                    full: offered - fit,
                    closed: fit,
                }
            }
        }
    }
}

impl<T> QueueRx<T> {
    /// The next chunk; `None` once the sender is gone and the channel is empty.
    pub async fn recv(&mut self) -> Option<Vec<T>> {
        self.rx.recv().await
    }

    /// Gives back the room of `n` items that have left the export stage.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.room.add_permits(n);
        }
    }

    /// Items held anywhere in the queue (channel and export stage).
    pub fn held(&self) -> usize {
        self.capacity - self.room.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_is_in_items_not_chunks() {
        let (tx, mut rx) = bounded::<u32>(10);
        // Many small chunks fill nothing but their items.
        for i in 0..9 {
            assert_eq!(tx.send(vec![i]).queued, 1);
        }
        assert_eq!(rx.held(), 9);
        // A chunk that does not fit is cut: the newest go.
        let s = tx.send(vec![100, 101, 102]);
        assert_eq!(
            s,
            Sent {
                queued: 1,
                full: 2,
                closed: 0
            }
        );
        assert_eq!(tx.send(vec![200]).full, 1);
        for i in 0..9 {
            assert_eq!(rx.recv().await, Some(vec![i]));
        }
        assert_eq!(rx.recv().await, Some(vec![100]));
        // Received is still held until released.
        assert_eq!(rx.held(), 10);
        rx.release(4);
        assert_eq!(rx.held(), 6);
        assert_eq!(tx.send(vec![1, 2, 3, 4, 5]).queued, 4);
    }

    #[tokio::test]
    async fn the_last_quarter_is_kept_for_important_items() {
        let (tx, mut rx) = bounded::<u32>(8);
        // Ordinary items stop at 6 of 8.
        let s = tx.send_prioritized((0..10).collect(), 0);
        assert_eq!((s.queued, s.full), (6, 4));
        assert_eq!(rx.recv().await, Some((0..6).collect()));
        // Important ones still get in; ordinary ones in the same chunk do not.
        let s = tx.send_prioritized(vec![100, 101, 1, 2], 2);
        assert_eq!((s.queued, s.full), (2, 2));
        assert_eq!(rx.recv().await, Some(vec![100, 101]));
        assert_eq!(tx.send_prioritized(vec![102, 103], 2).full, 2);
        rx.release(8);
        // With room, a mixed chunk goes whole.
        assert_eq!(tx.send_prioritized(vec![7, 8, 9], 1).queued, 3);
    }

    #[tokio::test]
    async fn a_closed_queue_counts_what_it_could_not_send() {
        let (tx, rx) = bounded::<u32>(2);
        drop(rx);
        assert_eq!(
            tx.send(vec![1, 2, 3]),
            Sent {
                queued: 0,
                full: 1,
                closed: 2
            }
        );
    }

    #[tokio::test]
    async fn recv_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = bounded::<u32>(4);
        tx.send(vec![7]);
        drop(tx);
        assert_eq!(rx.recv().await, Some(vec![7]));
        assert_eq!(rx.recv().await, None);
    }
}
