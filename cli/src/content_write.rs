//! One Content Write call from the client side: each message sent gets
//! exactly one reply, so the two halves of the stream go in lockstep.

use corten_api::containerd::services::content::v1::{WriteContentRequest, WriteContentResponse};
use tokio::sync::mpsc;
use tonic::Status;

pub struct WriteSession {
    requests: mpsc::Sender<WriteContentRequest>,
    replies: tonic::Streaming<WriteContentResponse>,
}

impl WriteSession {
    /// The session over a call already made: `requests` feeds the stream
    /// the call sends, `replies` is what it answered.
    pub fn new(
        requests: mpsc::Sender<WriteContentRequest>,
        replies: tonic::Streaming<WriteContentResponse>,
    ) -> WriteSession {
        WriteSession { requests, replies }
    }

    /// Sends `message` and waits for its reply.
    pub async fn exchange(&mut self, message: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if self.requests.send(message).await.is_err() {
            // The request half is gone only when the call has ended; its
            // status says why.
            return Err(match self.replies.message().await {
                Err(status) => status,
                Ok(_) => Status::unknown("the daemon closed the write stream"),
            });
        }
        self.reply().await
    }

    /// Waits for the reply to a message sent before.
    pub async fn reply(&mut self) -> Result<WriteContentResponse, Status> {
        self.replies
            .message()
            .await?
            .ok_or_else(|| Status::unknown("the daemon ended the write stream without replying"))
    }
}
