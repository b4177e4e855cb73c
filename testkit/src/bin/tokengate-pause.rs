//! The pod sandbox's first process for the node tier's containerd: holds the pod's namespaces
//! and exits on SIGTERM or SIGINT. (The node tier builds every image it runs, pause included.)

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tokengate_runtime::signals::wait_for_signal().await;
}
