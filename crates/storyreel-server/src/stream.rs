//! The WebSocket of a session: its view on connect, then every event and decoded frame as it
//! happens. A client that goes away only ends its own connection; generation goes on.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

use crate::hub::{Event, Hub};
use crate::views::SessionView;

/// Serves one WebSocket client of a session until either side closes.
pub async fn serve_socket(
    socket: WebSocket,
    _hub: Arc<Hub>,
    view: SessionView,
    mut events: broadcast::Receiver<Event>,
) {
    let (mut tx, mut rx) = socket.split();
    let hello = serde_json::json!({"type": "session", "session": view});
    if tx.send(Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => {
                let message = match event {
                    Ok(Event::Text(text)) => Message::Text(text.into()),
                    Ok(Event::Frame(bytes)) => Message::Binary(bytes),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Message::Text(serde_json::json!({"type": "lagged", "missed": missed}).to_string().into())
                    }
                    // The session was deleted or left memory.
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
            incoming = rx.next() => {
                match incoming {
                    // Client messages other than close carry nothing for us.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    let _ = tx.close().await;
}
