//! Stripe: the webhook (`Stripe-Signature`) and the outbound client (PaymentIntents, refunds).
