//! Files protocol messages, as a provider (requests) and a downloader
//! (responses) read them, with the range checks a provider applies.
#![no_main]
use burrow_proto::files::{FilesRequest, FilesResponse, MAX_FRAME, VERSION};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(FilesRequest::Get { ranges, .. }) =
        burrow_proto::frame::decode::<FilesRequest>(VERSION, data, MAX_FRAME)
    {
        let _ = burrow_proto::files::ranges_valid(&ranges);
    }
    let _ = burrow_proto::frame::decode::<FilesResponse>(VERSION, data, MAX_FRAME);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = burrow_proto::files::safe_file_name(s);
        let _ = s.parse::<burrow_proto::ShareName>();
    }
});
