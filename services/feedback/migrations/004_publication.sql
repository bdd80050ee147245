-- FFT publication parity: the care setting an answer is about and how it was collected (both
-- optional; NHS England publishes FFT results by setting and mode of collection). A 5-character
-- provider_code names the site.
ALTER TABLE submissions ADD COLUMN setting text;
ALTER TABLE submissions ADD COLUMN collection_mode text
    CHECK (collection_mode IN ('sms', 'app', 'online', 'tablet', 'paper', 'telephone', 'other'));
CREATE INDEX submissions_fft_provider_month ON submissions (provider_code, authored_at) WHERE instrument = 'fft';
